-- Pair counts per dataset version, round and learner agent.
-- verdict: info.
WITH c AS (
    SELECT dataset, version, round, agent, count(*) AS n FROM pairs GROUP BY ALL
)
SELECT coalesce(sum(n), 0)::BIGINT AS count,
       'info' AS verdict,
       coalesce(string_agg(dataset || '/' || version || ' round ' || round || ' ' || agent || ': ' || n, ', '
                           ORDER BY dataset, version, round, agent), '') AS detail
FROM c
