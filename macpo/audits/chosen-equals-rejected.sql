-- Pairs whose chosen and rejected responses are identical: DPO gets no signal from them.
-- verdict: fail when any exist.
-- Compares the per-row facts (64-bit hash and byte length of each message list) instead of
-- the text: a false match needs a hash collision of two lists of the same length.
SELECT count(*) AS count,
       CASE WHEN count(*) = 0 THEN 'ok' ELSE 'fail' END AS verdict,
       coalesce(string_agg(DISTINCT dataset || '/' || version || '/' || subset, ', ' ORDER BY dataset || '/' || version || '/' || subset), '') AS detail
FROM pairs_facts
WHERE chosen_key = rejected_key AND chosen_bytes = rejected_bytes
