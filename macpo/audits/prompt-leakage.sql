-- Held-out prompts (prompts with split 'test') that also appear in a training table
-- (pairs, sft, or non-test prompts) of any dataset.
-- verdict: fail when any test prompt leaks into training data.
WITH test AS (
    SELECT DISTINCT prompt_text FROM prompts WHERE split = 'test'
), train AS (
    SELECT prompt_text FROM pairs
    UNION SELECT prompt_text FROM sft
    UNION SELECT prompt_text FROM prompts WHERE split IS DISTINCT FROM 'test'
)
SELECT count(*) AS count,
       CASE WHEN count(*) = 0 THEN 'ok' ELSE 'fail' END AS verdict,
       (SELECT count(*) FROM test) || ' test prompts checked' AS detail
FROM test JOIN train USING (prompt_text)
