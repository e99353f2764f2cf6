"""Active selection: ``services`` (round_select), ``selectors`` (the strategies' scores), ``compare`` (measured)."""
