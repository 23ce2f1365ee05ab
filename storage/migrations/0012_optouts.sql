-- Issue 20, part 3: opt-out requests. Anyone may ask, through the scanner's public page
-- (`brokerscan serve --identity-page`), that networks be left alone; an operator approves
-- or rejects each request (`brokerscan optout approve|reject`, /api/v1/optouts). Approved
-- networks join every sweep's blocklist: new sweeps and scheduled runs plan without them,
-- and running sweeps skip them from the next dispatch round on. A decided request keeps
-- its row (a rejection is a record too). It touches no table of earlier migrations.

CREATE TABLE optouts (
    id          text        PRIMARY KEY,
    networks    text        NOT NULL,   -- IPv4 CIDRs, comma separated, as validated
    contact     text        NOT NULL,
    reason      text        NOT NULL DEFAULT '',
    client      text        NOT NULL DEFAULT '',   -- the address the request came from
    state       text        NOT NULL DEFAULT 'pending'
                            CHECK (state IN ('pending', 'approved', 'rejected')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    decided_at  timestamptz,
    decided_by  text
);
CREATE INDEX optouts_state ON optouts (state, created_at);
