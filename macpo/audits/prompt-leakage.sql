-- Held-out prompts (prompts with split 'test') that also appear in a training table
-- (pairs, sft, or non-test prompts) of any dataset.
-- verdict: fail when any test prompt leaks into training data.
WITH test AS (
    SELECT DISTINCT prompt FROM prompts WHERE split = 'test'
)
SELECT count(*) AS count,
       CASE WHEN count(*) = 0 THEN 'ok' ELSE 'fail' END AS verdict,
       (SELECT count(*) FROM test) || ' test prompts checked' AS detail
FROM test
WHERE prompt IN (SELECT prompt FROM pairs)
   OR prompt IN (SELECT prompt FROM sft)
   OR prompt IN (SELECT prompt FROM prompts WHERE split IS DISTINCT FROM 'test')
