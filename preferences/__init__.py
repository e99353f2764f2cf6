"""The ranking rules, in one place: pure Python, no Django, nothing of the apps.

``preferences.tiers`` turns scores into tiers (one tie rule) and tiers into pairs; ``preferences.simulated`` is
the one simulated labeler (utility + Gaussian noise → tiers). The annotation app (rankings, import/export,
label quality), the pure ML package (``training.ml``) and the lab all import these, so a ranking means the same
thing in the browser, in the trainers and in the simulated loops. ``pyproject.toml`` keeps this package the
bottom layer: it imports nothing above it.
"""
