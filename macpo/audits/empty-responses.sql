-- Pairs with an empty (whitespace-only) chosen or rejected response.
-- verdict: fail when any exist; n/a when there are no pairs. One line per dataset version, then the store.
WITH v AS (
    SELECT dataset, version, count(*) AS pairs,
           count(*) FILTER (WHERE chosen_blank OR rejected_blank) AS empty,
           count(*) FILTER (WHERE chosen_blank) AS chosen, count(*) FILTER (WHERE rejected_blank) AS rejected
    FROM pairs_facts GROUP BY dataset, version
)
SELECT CASE WHEN grouping(dataset) = 1 THEN 'all' ELSE dataset || '/' || version END AS scope,
       coalesce(sum(empty), 0)::BIGINT AS count,
       CASE WHEN coalesce(sum(pairs), 0) = 0 THEN 'n/a' WHEN sum(empty) = 0 THEN 'ok' ELSE 'fail' END AS verdict,
       CASE WHEN coalesce(sum(pairs), 0) = 0 THEN 'no pairs to check'
            ELSE 'chosen empty: ' || sum(chosen) || ', rejected empty: ' || sum(rejected) || ' of ' || sum(pairs) || ' pairs' END AS detail
FROM v
GROUP BY GROUPING SETS ((dataset, version), ())
ORDER BY grouping(dataset), dataset, version
