-- kpfmasters calibration database schema, version 1
--
-- Applied by `kpfmasters db init` (kpfmasters.db.schema.init_schema) as an administrator.
-- Every statement is idempotent: applying the file again changes nothing. Roles and grants
-- are made by init_schema, whose role names are command-line options.
--
-- Table calfiles is compatible with KPF's CalFiles (docs/reference.md, 'The calibration database'): one row per master file;
-- level 0 = the 2D masters of kpf-masters. caltype and object are stored lowercase.

CREATE TABLE IF NOT EXISTS schema_version (
    version integer PRIMARY KEY,
    applied timestamptz NOT NULL DEFAULT now(),
    softver text NOT NULL
);

CREATE TABLE IF NOT EXISTS calfiles (
    cid serial PRIMARY KEY,
    level smallint NOT NULL CHECK (level >= 0),
    caltype text NOT NULL CHECK (caltype = lower(caltype) AND caltype <> ''),
    object text NOT NULL CHECK (object = lower(object)),
    contentbits integer NOT NULL CHECK (contentbits >= 0),
    nframes integer CHECK (nframes >= 0),
    minmjd double precision,
    maxmjd double precision,
    infobits integer NOT NULL DEFAULT 0,
    startdate date NOT NULL,
    enddate date NOT NULL,
    filename text NOT NULL,
    checksum text NOT NULL CHECK (checksum ~ '^[0-9a-f]{32}$'),
    status smallint NOT NULL DEFAULT 1,
    createdby text NOT NULL,
    created timestamptz NOT NULL DEFAULT now(),
    comment text,
    CONSTRAINT calfiles_night_key UNIQUE (startdate, level, caltype, object),
    CONSTRAINT calfiles_dates_check CHECK (enddate > startdate)
);

CREATE INDEX IF NOT EXISTS calfiles_lookup_idx ON calfiles (level, caltype, object, startdate);

COMMENT ON TABLE calfiles IS 'kpfmasters master calibration files, schema version 1';

-- init_schema records the version in schema_version after applying this file.
