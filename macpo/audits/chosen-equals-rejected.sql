-- Pairs whose chosen and rejected responses are identical: DPO gets no signal from them.
-- verdict: fail when any exist; n/a when there are no pairs. One line per dataset version, then the store.
-- Compares the per-row facts (64-bit hash and byte length of each message list) instead of
-- the text: a false match needs a hash collision of two lists of the same length.
WITH p AS (
    SELECT dataset, version, subset, chosen_key = rejected_key AND chosen_bytes = rejected_bytes AS same FROM pairs_facts
), v AS (
    SELECT dataset, version, count(*) AS pairs, count(*) FILTER (WHERE same) AS same,
           string_agg(DISTINCT subset, ', ' ORDER BY subset) FILTER (WHERE same) AS subsets
    FROM p GROUP BY dataset, version
)
SELECT CASE WHEN grouping(dataset) = 1 THEN 'all' ELSE dataset || '/' || version END AS scope,
       coalesce(sum(same), 0)::BIGINT AS count,
       CASE WHEN coalesce(sum(pairs), 0) = 0 THEN 'n/a' WHEN sum(same) = 0 THEN 'ok' ELSE 'fail' END AS verdict,
       CASE WHEN coalesce(sum(pairs), 0) = 0 THEN 'no pairs to compare'
            ELSE sum(same) || ' of ' || sum(pairs) || ' pairs'
                 || CASE WHEN grouping(dataset) = 0 AND any_value(subsets) IS NOT NULL THEN ' (' || any_value(subsets) || ')' ELSE '' END
       END AS detail
FROM v
GROUP BY GROUPING SETS ((dataset, version), ())
ORDER BY grouping(dataset), dataset, version
