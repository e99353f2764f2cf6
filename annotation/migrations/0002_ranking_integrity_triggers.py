"""PostgreSQL triggers that guard what unique and check constraints cannot express (no-op on SQLite).

1. A ranking covers exactly its prompt's samples: every entry's sample belongs to ranking.prompt and
   count(entries) = count(prompt's samples). A constraint trigger DEFERRABLE INITIALLY DEFERRED, so the
   Ranking row and its entries can be inserted one after the other and are checked together at commit.
2. A pair compares two samples of its own prompt, and pair.prompt = ranking.prompt (checked per row).

Violations raise SQLSTATE 23514 (check_violation), which Django reports as IntegrityError.
"""
from django.db import migrations

FORWARD_SQL = """
CREATE OR REPLACE FUNCTION annotation_ranking_covers_prompt() RETURNS trigger AS $$
DECLARE
    rid bigint;
    pid bigint;
    n_entries integer;
    n_foreign integer;
    n_samples integer;
BEGIN
    IF TG_TABLE_NAME = 'annotation_ranking' THEN
        rid := NEW.id;
    ELSIF TG_OP = 'DELETE' THEN
        rid := OLD.ranking_id;
    ELSE
        rid := NEW.ranking_id;
    END IF;
    SELECT prompt_id INTO pid FROM annotation_ranking WHERE id = rid;
    IF NOT FOUND THEN
        RETURN NULL;  -- the ranking itself was deleted (cascade): nothing left to check
    END IF;
    SELECT count(*), count(*) FILTER (WHERE s.prompt_id IS DISTINCT FROM pid)
      INTO n_entries, n_foreign
      FROM annotation_rankingentry e LEFT JOIN annotation_sample s ON s.id = e.sample_id
     WHERE e.ranking_id = rid;
    SELECT count(*) INTO n_samples FROM annotation_sample WHERE prompt_id = pid;
    IF n_foreign > 0 OR n_entries <> n_samples THEN
        RAISE EXCEPTION 'ranking % must rank exactly the % samples of prompt %: it has % entries, % of them from another prompt',
            rid, n_samples, pid, n_entries, n_foreign
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE CONSTRAINT TRIGGER annotation_ranking_covers_prompt_on_ranking
    AFTER INSERT OR UPDATE OF prompt_id ON annotation_ranking
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION annotation_ranking_covers_prompt();

CREATE CONSTRAINT TRIGGER annotation_ranking_covers_prompt_on_entry
    AFTER INSERT OR UPDATE OF ranking_id, sample_id OR DELETE ON annotation_rankingentry
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION annotation_ranking_covers_prompt();

CREATE OR REPLACE FUNCTION annotation_pair_within_prompt() RETURNS trigger AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM annotation_sample WHERE id = NEW.chosen_id AND prompt_id = NEW.prompt_id)
       OR NOT EXISTS (SELECT 1 FROM annotation_sample WHERE id = NEW.rejected_id AND prompt_id = NEW.prompt_id) THEN
        RAISE EXCEPTION 'pair %: chosen sample % and rejected sample % must both be samples of prompt %',
            NEW.id, NEW.chosen_id, NEW.rejected_id, NEW.prompt_id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM annotation_ranking WHERE id = NEW.ranking_id AND prompt_id = NEW.prompt_id) THEN
        RAISE EXCEPTION 'pair %: its prompt % is not the prompt of ranking %', NEW.id, NEW.prompt_id, NEW.ranking_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER annotation_pair_within_prompt
    AFTER INSERT OR UPDATE OF prompt_id, chosen_id, rejected_id, ranking_id ON annotation_pairwisecomparison
    FOR EACH ROW EXECUTE FUNCTION annotation_pair_within_prompt();
"""

REVERSE_SQL = """
DROP TRIGGER IF EXISTS annotation_pair_within_prompt ON annotation_pairwisecomparison;
DROP FUNCTION IF EXISTS annotation_pair_within_prompt();
DROP TRIGGER IF EXISTS annotation_ranking_covers_prompt_on_entry ON annotation_rankingentry;
DROP TRIGGER IF EXISTS annotation_ranking_covers_prompt_on_ranking ON annotation_ranking;
DROP FUNCTION IF EXISTS annotation_ranking_covers_prompt();
"""


def _on_postgresql(sql: str):
    def run(apps, schema_editor) -> None:
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql, params=None)  # None: no %-interpolation of the SQL

    return run


class Migration(migrations.Migration):
    dependencies = [("annotation", "0001_initial")]

    operations = [migrations.RunPython(_on_postgresql(FORWARD_SQL), _on_postgresql(REVERSE_SQL))]
