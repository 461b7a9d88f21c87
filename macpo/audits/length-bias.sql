-- Share of pairs whose chosen response is longer (in bytes) than the rejected one. Far from
-- 50%, DPO can learn "longer is better" instead of the preference.
-- verdict: warn outside 35%-65%.
WITH p AS (
    SELECT chosen_bytes > rejected_bytes AS longer FROM pairs_facts
)
SELECT count(*) FILTER (WHERE longer) AS count,
       CASE WHEN count(*) = 0 THEN 'ok'
            WHEN avg(longer::INT) BETWEEN 0.35 AND 0.65 THEN 'ok' ELSE 'warn' END AS verdict,
       'chosen longer in ' || coalesce(round(100 * avg(longer::INT), 1), 0) || '% of ' || count(*) || ' pairs' AS detail
FROM p
