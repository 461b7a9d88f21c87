-- Distinct prompts of the latest version of each dataset that occur in the latest
-- version of another dataset (cross-dataset leakage or reuse).
-- verdict: warn when any overlap exists (expected between a run and its own data).
-- Prompts are compared by their 64-bit hash (the *_facts views), not their text.
WITH latest AS (
    SELECT dataset, max_by(version, coalesce(TRY_CAST(regexp_extract(version, '(\d+)$', 1) AS INTEGER), -1)) AS version
    FROM datasets GROUP BY dataset
), all_prompts AS (
    SELECT dataset, version, prompt_key FROM pairs_facts
    UNION SELECT dataset, version, prompt_key FROM prompts_facts
    UNION SELECT dataset, version, prompt_key FROM sft_facts
), per_dataset AS (
    SELECT DISTINCT a.dataset, a.prompt_key FROM all_prompts a JOIN latest USING (dataset, version)
), shared AS (
    SELECT prompt_key, count(*) AS n_datasets, string_agg(dataset, '+' ORDER BY dataset) AS which
    FROM per_dataset GROUP BY prompt_key HAVING count(*) > 1
)
SELECT count(*) AS count,
       CASE WHEN count(*) = 0 THEN 'ok' ELSE 'warn' END AS verdict,
       coalesce(string_agg(DISTINCT which, ', ' ORDER BY which), '') AS detail
FROM shared
