-- Pairs repeated verbatim (same prompt, chosen and rejected) within one subset of one version.
-- verdict: warn when any exist; duplicates over-weight those pairs in training.
-- Groups by DuckDB's 64-bit hash of the three message lists: 4x faster than grouping by the
-- values on 10M pairs; a collision among 10M rows has probability ~3e-6 and could only add one.
WITH groups AS (
    SELECT dataset, version, subset, count(*) AS n
    FROM pairs
    GROUP BY dataset, version, subset, hash(prompt, chosen, rejected)
    HAVING count(*) > 1
)
SELECT coalesce(sum(n - 1), 0)::BIGINT AS count,
       CASE WHEN count(*) = 0 THEN 'ok' ELSE 'warn' END AS verdict,
       coalesce(string_agg(DISTINCT dataset || '/' || version || '/' || subset, ', '), '') AS detail
FROM groups
