-- Distinct prompts of the latest version of each dataset that occur in the latest
-- version of another dataset (cross-dataset leakage or reuse).
-- verdict: warn when any overlap exists (expected between a run and its own data).
WITH latest AS (
    SELECT dataset, max_by(version, coalesce(TRY_CAST(regexp_extract(version, '(\d+)$', 1) AS INTEGER), -1)) AS version
    FROM datasets GROUP BY dataset
), all_prompts AS (
    SELECT dataset, version, prompt FROM pairs
    UNION SELECT dataset, version, prompt FROM prompts
    UNION SELECT dataset, version, prompt FROM sft
), per_dataset AS (
    SELECT DISTINCT a.dataset, a.prompt FROM all_prompts a JOIN latest USING (dataset, version)
), shared AS (
    SELECT prompt, count(*) AS n_datasets, string_agg(dataset, '+' ORDER BY dataset) AS which
    FROM per_dataset GROUP BY prompt HAVING count(*) > 1
)
SELECT count(*) AS count,
       CASE WHEN count(*) = 0 THEN 'ok' ELSE 'warn' END AS verdict,
       coalesce(string_agg(DISTINCT which, ', '), '') AS detail
FROM shared
