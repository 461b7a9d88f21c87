-- Training rows (pairs and sft) per dataset version, round and learner agent.
-- verdict: info; n/a when the store holds no training rows. One line per dataset version, then the store.
WITH c AS (
    SELECT dataset, version, 'pairs' AS kind, round, agent, count(*) AS n FROM pairs_facts GROUP BY ALL
    UNION ALL
    SELECT dataset, version, 'sft' AS kind, round, agent, count(*) AS n FROM sft_facts GROUP BY ALL
), v AS (
    SELECT dataset, version, sum(n) AS n,
           string_agg(kind || ' round ' || round || ' ' || agent || ': ' || n, ', ' ORDER BY kind, round, agent) AS detail
    FROM c GROUP BY dataset, version
)
SELECT CASE WHEN grouping(dataset) = 1 THEN 'all' ELSE dataset || '/' || version END AS scope,
       coalesce(sum(n), 0)::BIGINT AS count,
       CASE WHEN coalesce(sum(n), 0) = 0 THEN 'n/a' ELSE 'info' END AS verdict,
       CASE WHEN coalesce(sum(n), 0) = 0 THEN 'no pairs or sft rows in the store'
            WHEN grouping(dataset) = 0 THEN any_value(detail)
            ELSE sum(n) || ' training rows in ' || count(*) || ' dataset versions' END AS detail
FROM v
GROUP BY GROUPING SETS ((dataset, version), ())
ORDER BY grouping(dataset), dataset, version
