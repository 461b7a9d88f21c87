-- Pairs with an empty (whitespace-only) chosen or rejected response.
-- verdict: fail when any exist.
WITH p AS (
    SELECT NOT coalesce(list_bool_or(list_transform(chosen, lambda m: regexp_matches(m.content, '\S'))), false) AS chosen_empty,
           NOT coalesce(list_bool_or(list_transform(rejected, lambda m: regexp_matches(m.content, '\S'))), false) AS rejected_empty
    FROM pairs
)
SELECT count(*) FILTER (WHERE chosen_empty OR rejected_empty) AS count,
       CASE WHEN count(*) FILTER (WHERE chosen_empty OR rejected_empty) = 0 THEN 'ok' ELSE 'fail' END AS verdict,
       'chosen empty: ' || count(*) FILTER (WHERE chosen_empty) || ', rejected empty: ' || count(*) FILTER (WHERE rejected_empty) AS detail
FROM p
