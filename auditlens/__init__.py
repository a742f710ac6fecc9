"""The console face of auditlens: the `auditlens` command (cli.py), what it prints (console.py) and the deployments
it serves or renders (serving.py). Imports run auditlens -> flows -> tasks -> audits; nothing imports this package
back (only the tests, and the benchmarks that time the command)."""
