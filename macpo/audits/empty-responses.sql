-- Pairs with an empty (whitespace-only) chosen or rejected response.
-- verdict: fail when any exist.
SELECT count(*) AS count,
       CASE WHEN count(*) = 0 THEN 'ok' ELSE 'fail' END AS verdict,
       'chosen empty: ' || count(*) FILTER (WHERE trim(chosen_text) = '')
         || ', rejected empty: ' || count(*) FILTER (WHERE trim(rejected_text) = '') AS detail
FROM pairs
WHERE trim(chosen_text) = '' OR trim(rejected_text) = ''
