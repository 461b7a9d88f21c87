-- Pairs whose chosen and rejected responses are identical: DPO gets no signal from them.
-- verdict: fail when any exist.
-- Compares the message lists themselves (no text is built: ~2x faster on 10M pairs).
SELECT count(*) AS count,
       CASE WHEN count(*) = 0 THEN 'ok' ELSE 'fail' END AS verdict,
       coalesce(string_agg(DISTINCT dataset || '/' || version || '/' || subset, ', '), '') AS detail
FROM pairs
WHERE chosen = rejected
