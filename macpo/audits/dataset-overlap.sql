-- Distinct prompts of the latest version of each dataset that occur in the latest
-- version of another dataset (cross-dataset leakage or reuse), with counts per dataset pair.
-- verdict: warn when any overlap exists (expected between a run and its own data); n/a with
-- fewer than two datasets. One line per dataset, then the store.
-- Prompts are compared by their 64-bit hash (the *_facts views), not their text.
WITH latest AS (
    SELECT dataset, max_by(version, coalesce(TRY_CAST(regexp_extract(version, '(\d+)$', 1) AS INTEGER), -1)) AS version
    FROM datasets GROUP BY dataset
), all_prompts AS (
    SELECT dataset, version, prompt_key FROM pairs_facts
    UNION SELECT dataset, version, prompt_key FROM prompts_facts
    UNION SELECT dataset, version, prompt_key FROM sft_facts
), per_dataset AS (
    SELECT DISTINCT a.dataset, a.version, a.prompt_key FROM all_prompts a JOIN latest USING (dataset, version)
), shared AS (
    SELECT prompt_key, string_agg(dataset, '+' ORDER BY dataset) AS which
    FROM per_dataset GROUP BY prompt_key HAVING count(*) > 1
), n_datasets AS (
    SELECT count(DISTINCT dataset) AS n FROM per_dataset
), with_other AS (  -- (dataset, other dataset, shared prompts), over the shared prompts only
    SELECT a.dataset, b.dataset AS other, count(*) AS n
    FROM per_dataset a JOIN per_dataset b ON a.prompt_key = b.prompt_key AND a.dataset <> b.dataset
    WHERE a.prompt_key IN (SELECT prompt_key FROM shared) GROUP BY ALL
), v AS (
    SELECT d.dataset, d.version, d.prompts,
           (SELECT count(*) FROM per_dataset p WHERE p.dataset = d.dataset AND p.prompt_key IN (SELECT prompt_key FROM shared)) AS shared,
           (SELECT string_agg(other || ' ' || n, ', ' ORDER BY other) FROM with_other w WHERE w.dataset = d.dataset) AS others
    FROM (SELECT dataset, version, count(*) AS prompts FROM per_dataset GROUP BY ALL) d
), lines AS (
    SELECT 0 AS last, dataset, dataset || '/' || version AS scope, shared AS count,
           CASE WHEN shared = 0 THEN 'ok' ELSE 'warn' END AS verdict,
           shared || ' of ' || prompts || ' prompts also in another dataset' || coalesce(' (' || others || ')', '') AS detail
    FROM v WHERE (SELECT n FROM n_datasets) > 1
    UNION ALL
    SELECT 1, NULL, 'all', (SELECT count(*) FROM shared),
           CASE WHEN (SELECT n FROM n_datasets) < 2 THEN 'n/a' WHEN (SELECT count(*) FROM shared) = 0 THEN 'ok' ELSE 'warn' END,
           CASE WHEN (SELECT n FROM n_datasets) < 2 THEN 'fewer than two datasets hold prompts'
                ELSE (SELECT count(*) FROM shared) || ' prompts in more than one dataset'
                     || coalesce(' (' || (SELECT string_agg(which || ': ' || n, ', ' ORDER BY which)
                                           FROM (SELECT which, count(*) AS n FROM shared GROUP BY which)) || ')', '') END
)
SELECT scope, count::BIGINT AS count, verdict, detail FROM lines ORDER BY last, dataset
