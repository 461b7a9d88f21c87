-- Pairs with an empty (whitespace-only) chosen or rejected response.
-- verdict: fail when any exist.
SELECT count(*) FILTER (WHERE chosen_blank OR rejected_blank) AS count,
       CASE WHEN count(*) FILTER (WHERE chosen_blank OR rejected_blank) = 0 THEN 'ok' ELSE 'fail' END AS verdict,
       'chosen empty: ' || count(*) FILTER (WHERE chosen_blank) || ', rejected empty: ' || count(*) FILTER (WHERE rejected_blank) AS detail
FROM pairs_facts
