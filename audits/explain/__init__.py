"""Explanation audits: SHAP now; LIME, prototypes, occlusion and sanity checks to follow."""
