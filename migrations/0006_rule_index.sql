-- sealmq schema 6: the rule events among the indexed records.
--
-- Which rules are active is a fold over the log's kind-3 records; the API
-- (`/v1/rules`, polled by open explorer pages) and `sealmq rule list` find
-- them here instead of scanning every indexed record. Partial: it holds
-- only the few kind-3 rows.
CREATE INDEX record_index_rules ON record_index (idx) WHERE kind = 3;
