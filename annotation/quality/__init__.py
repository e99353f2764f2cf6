"""Label quality: agreement, gold, review, reliability and consensus over the collected rankings.

``metrics`` holds the pure figures (no database); ``models`` the tables (registered through
``annotation.models``); ``selectors`` the reads (the report, the review queue, what the page lists);
``services`` the writes (settings, gold, review, exclusions, pair weights); ``views`` and ``api`` the
researchers' page and JSON API.
"""
