-- Share of pairs whose chosen response is longer (in bytes) than the rejected one. Far from
-- 50%, DPO can learn "longer is better" instead of the preference.
-- verdict: warn outside 35%-65%; n/a when there are no pairs. One line per dataset version, then
-- the store: a pooled share can sit inside the band while single datasets are far outside it.
WITH v AS (
    SELECT dataset, version, count(*) AS pairs, count(*) FILTER (WHERE chosen_bytes > rejected_bytes) AS longer
    FROM pairs_facts GROUP BY dataset, version
)
SELECT CASE WHEN grouping(dataset) = 1 THEN 'all' ELSE dataset || '/' || version END AS scope,
       coalesce(sum(longer), 0)::BIGINT AS count,
       CASE WHEN coalesce(sum(pairs), 0) = 0 THEN 'n/a'
            WHEN sum(longer) / sum(pairs) BETWEEN 0.35 AND 0.65 THEN 'ok' ELSE 'warn' END AS verdict,
       CASE WHEN coalesce(sum(pairs), 0) = 0 THEN 'no pairs to compare'
            ELSE 'chosen longer in ' || round(100 * sum(longer) / sum(pairs), 1) || '% of ' || sum(pairs) || ' pairs' END AS detail
FROM v
GROUP BY GROUPING SETS ((dataset, version), ())
ORDER BY grouping(dataset), dataset, version
