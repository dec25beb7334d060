//! What workers do in Postgres: claim jobs, keep leases, checkpoint, finish; the record ledger and
//! the Docebo call budget. (Filled in by the worker.)
