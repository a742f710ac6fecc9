"""Text as LIME sees it: words are runs of word characters."""

from __future__ import annotations

SPLIT_EXPRESSION = r"\W+"  # LIME's default: words are runs of word characters


def indexed(text: str):
    from lime.lime_text import IndexedString

    return IndexedString(text, split_expression=SPLIT_EXPRESSION, bow=True)
