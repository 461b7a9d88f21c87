-- Pairs with an empty (whitespace-only) chosen or rejected response.
-- verdict: fail when any exist.
WITH e AS (
    -- "No non-space character" (RE2 stops at the first one) rather than trim(x) = '': ~10x faster on
    -- long responses, and tabs/newlines count as whitespace too (DuckDB's trim strips spaces only).
    SELECT NOT regexp_matches(chosen_text, '\S') AS chosen_empty,
           NOT regexp_matches(rejected_text, '\S') AS rejected_empty
    FROM pairs
)
SELECT count(*) FILTER (WHERE chosen_empty OR rejected_empty) AS count,
       CASE WHEN count(*) FILTER (WHERE chosen_empty OR rejected_empty) = 0 THEN 'ok' ELSE 'fail' END AS verdict,
       'chosen empty: ' || count(*) FILTER (WHERE chosen_empty)
         || ', rejected empty: ' || count(*) FILTER (WHERE rejected_empty) AS detail
FROM e
