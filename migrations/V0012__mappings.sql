-- Each connection's Salesforce mapping, versioned: SetMapping adds a version, the newest is the
-- current one, and a job uses the version current when it starts. A connection without a row uses
-- the default mapping (version 0, compiled into the worker).
CREATE TABLE connection_mappings (
    connection_id  uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    version        integer NOT NULL CHECK (version > 0),
    -- The mapping in the form of the worker's mapping.json (every entity, every field).
    document       jsonb NOT NULL,
    create_time    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, version)
);

-- Which mapping version wrote a record (0: the default mapping; null: written before V0012).
ALTER TABLE ledger ADD COLUMN mapping_version integer;

-- The mapping version whose values the ledger's records of one object and job kind all hold (set
-- once a job finds, or makes, them so): a job starting under that version need not look for
-- records another version wrote, a scan of the object's ledger rows.
CREATE TABLE mapping_applied (
    connection_id  uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    object         text NOT NULL,
    scope          text NOT NULL,
    version        integer NOT NULL,
    PRIMARY KEY (connection_id, object, scope)
);
