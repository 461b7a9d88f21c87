-- Pairs repeated verbatim (same prompt, chosen and rejected) within one subset of one version.
-- verdict: warn when any exist (duplicates over-weight those pairs in training); n/a when there
-- are no pairs. One line per dataset version, then the store.
-- Groups by one 64-bit hash of the subset and the three message lists' hashes (pairs_facts),
-- then names the versions and subsets in a second pass over the few duplicated hashes: carrying
-- the names through 10M groups doubled the time, and so does materializing ``keyed`` (hence NOT
-- MATERIALIZED: it is scanned twice instead, reading only the hashes). A collision among 10M rows has probability ~3e-6 and
-- could only add one.
WITH keyed AS NOT MATERIALIZED (
    SELECT dataset, version, subset, hash(dataset, version, subset, prompt_key, chosen_key, rejected_key) AS h
    FROM pairs_facts
), duplicated AS (
    SELECT h FROM keyed GROUP BY h HAVING count(*) > 1
), dups AS (  -- each h lies in one subset of one version: extra copies = rows - distinct hashes
    SELECT dataset, version, count(*) - count(DISTINCT h) AS extra, string_agg(DISTINCT subset, ', ' ORDER BY subset) AS subsets
    FROM keyed WHERE h IN (SELECT h FROM duplicated) GROUP BY dataset, version
), v AS (
    SELECT t.dataset, t.version, t.pairs, coalesce(d.extra, 0) AS extra, d.subsets
    FROM (SELECT dataset, version, count(*) AS pairs FROM pairs_facts GROUP BY dataset, version) t
    LEFT JOIN dups d USING (dataset, version)
)
SELECT CASE WHEN grouping(dataset) = 1 THEN 'all' ELSE dataset || '/' || version END AS scope,
       coalesce(sum(extra), 0)::BIGINT AS count,
       CASE WHEN coalesce(sum(pairs), 0) = 0 THEN 'n/a' WHEN sum(extra) = 0 THEN 'ok' ELSE 'warn' END AS verdict,
       CASE WHEN coalesce(sum(pairs), 0) = 0 THEN 'no pairs to compare'
            ELSE sum(extra) || ' repeated row(s) among ' || sum(pairs) || ' pairs'
                 || CASE WHEN grouping(dataset) = 0 AND any_value(subsets) IS NOT NULL THEN ' (' || any_value(subsets) || ')' ELSE '' END
       END AS detail
FROM v
GROUP BY GROUPING SETS ((dataset, version), ())
ORDER BY grouping(dataset), dataset, version
