-- One row per saga. `state` is the whole saga (manager::saga::Saga) as JSON; the other
-- columns are what queries need. `version` is compared-and-set on every update, so two
-- manager replicas (or a reply racing a deadline) never both decide the same transition.
CREATE TABLE IF NOT EXISTS sagas (
    order_id      TEXT PRIMARY KEY,
    state         TEXT NOT NULL,
    status        TEXT NOT NULL,
    phase         TEXT NOT NULL,
    deadline_ms   BIGINT,               -- NULL once done
    version       BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS sagas_deadline ON sagas (deadline_ms);
