-- A record kept to be read again held the area's watermark back to its Docebo change time, so
-- every incremental run read Docebo again from there: one enrollment whose parent never comes
-- (an orphan, a record Docebo itself holds wrong) made every 15-minute run of a realtime area
-- read nearly everything (1,153 Docebo calls at 100k enrollments, where 70 suffice). Now a kept
-- record carries what it would write (the mapped record, as `job_deferred` holds it): the next
-- incremental run tries it again from there, without reading Docebo, and the watermark moves on.
-- A run over all time still reads it (and forgets it when its listing no longer has it).
ALTER TABLE retry_records ADD COLUMN record jsonb;
