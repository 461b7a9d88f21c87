-- Held-out prompts (prompts with split 'test') that also appear in a training table (pairs,
-- sft, or non-test prompts) of any dataset.
-- verdict: fail when any test prompt leaks into training data; n/a when the store has no
-- prompts with split 'test' to check. One line per training dataset version, then the store.
-- Prompts are compared by their 64-bit hash (the *_facts views), not their text.
WITH test AS (
    SELECT DISTINCT prompt_key FROM prompts_facts WHERE split = 'test'
), n_test AS (
    SELECT count(*) AS n FROM test
), train AS (
    SELECT dataset, version, prompt_key FROM pairs_facts
    UNION ALL SELECT dataset, version, prompt_key FROM sft_facts
    UNION ALL SELECT dataset, version, prompt_key FROM prompts_facts WHERE split IS DISTINCT FROM 'test'
), v AS (
    SELECT dataset, version, count(DISTINCT prompt_key) FILTER (WHERE prompt_key IN (SELECT prompt_key FROM test)) AS leaked
    FROM train GROUP BY dataset, version
), lines AS (
    SELECT 0 AS last, dataset, version, dataset || '/' || version AS scope, leaked AS count,
           CASE WHEN leaked = 0 THEN 'ok' ELSE 'fail' END AS verdict,
           leaked || ' of ' || (SELECT n FROM n_test) || ' test prompts in its training data' AS detail
    FROM v WHERE (SELECT n FROM n_test) > 0
    UNION ALL
    SELECT 1, NULL, NULL, 'all',
           (SELECT count(*) FROM test WHERE prompt_key IN (SELECT prompt_key FROM train)),
           CASE WHEN (SELECT n FROM n_test) = 0 THEN 'n/a'
                WHEN (SELECT count(*) FROM test WHERE prompt_key IN (SELECT prompt_key FROM train)) = 0 THEN 'ok' ELSE 'fail' END,
           CASE WHEN (SELECT n FROM n_test) = 0 THEN 'no prompts with split ''test'' in the store to check'
                ELSE (SELECT count(*) FROM test WHERE prompt_key IN (SELECT prompt_key FROM train)) || ' of '
                     || (SELECT n FROM n_test) || ' test prompts checked are in training data' END
)
SELECT scope, count::BIGINT AS count, verdict, detail FROM lines ORDER BY last, dataset, version
