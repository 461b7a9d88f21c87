-- Pairs repeated verbatim (same prompt, chosen and rejected) within one subset of one version.
-- verdict: warn when any exist; duplicates over-weight those pairs in training.
WITH groups AS (
    SELECT dataset, version, subset, count(*) AS n
    FROM pairs
    GROUP BY dataset, version, subset, prompt_text, chosen_text, rejected_text
    HAVING count(*) > 1
)
SELECT coalesce(sum(n - 1), 0)::BIGINT AS count,
       CASE WHEN count(*) = 0 THEN 'ok' ELSE 'warn' END AS verdict,
       coalesce(string_agg(DISTINCT dataset || '/' || version || '/' || subset, ', '), '') AS detail
FROM groups
