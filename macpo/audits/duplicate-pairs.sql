-- Pairs repeated verbatim (same prompt, chosen and rejected) within one subset of one version.
-- verdict: warn when any exist; duplicates over-weight those pairs in training.
-- Groups by one 64-bit hash of the subset and the three message lists' hashes (pairs_facts),
-- then names the subsets in a second pass over the few duplicated hashes: carrying the names
-- through 10M groups doubled the time, and so does materializing ``keyed`` (hence NOT
-- MATERIALIZED: it is scanned twice instead, reading only the hashes). A collision among 10M rows has probability ~3e-6 and
-- could only add one.
WITH keyed AS NOT MATERIALIZED (
    SELECT dataset, version, subset, hash(dataset, version, subset, prompt_key, chosen_key, rejected_key) AS h
    FROM pairs_facts
), duplicated AS (
    SELECT h, count(*) AS n FROM keyed GROUP BY h HAVING count(*) > 1
)
SELECT coalesce(sum(n - 1), 0)::BIGINT AS count,
       CASE WHEN count(*) = 0 THEN 'ok' ELSE 'warn' END AS verdict,
       (SELECT coalesce(string_agg(DISTINCT dataset || '/' || version || '/' || subset, ', ' ORDER BY dataset || '/' || version || '/' || subset), '')
        FROM keyed WHERE h IN (SELECT h FROM duplicated)) AS detail
FROM duplicated
