-- Held-out prompts (prompts with split 'test') that also appear in a training table
-- (pairs, sft, or non-test prompts) of any dataset.
-- verdict: fail when any test prompt leaks into training data.
-- Prompts are compared by their 64-bit hash (the *_facts views), not their text.
WITH test AS (
    SELECT DISTINCT prompt_key FROM prompts_facts WHERE split = 'test'
)
SELECT count(*) AS count,
       CASE WHEN count(*) = 0 THEN 'ok' ELSE 'fail' END AS verdict,
       (SELECT count(*) FROM test) || ' test prompts checked' AS detail
FROM test
WHERE prompt_key IN (SELECT prompt_key FROM pairs_facts)
   OR prompt_key IN (SELECT prompt_key FROM sft_facts)
   OR prompt_key IN (SELECT prompt_key FROM prompts_facts WHERE split IS DISTINCT FROM 'test')
