-- Which job lists a ledger record: the webinar and the ILT session-enrollment jobs both write
-- Docebo_Session_Enrollment__c, and each compares only its own records with its listing when it
-- looks for unenrollments (otherwise the first to finish would take the other's records for gone).
ALTER TABLE ledger ADD COLUMN scope text;
