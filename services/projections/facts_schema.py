"""Tables of the case read models beside the registration table: one fact row per case,
a row per department stint and a row per clock. Written by the `projections` consumer in
the transaction that moves its Kafka position (see `casefile`), rebuilt from the event
store by `feedback projections rebuild cases`.

`customer_ref` is the vault's pseudonymous reference (no personal data); BI views leave it
out all the same.
"""

from __future__ import annotations

TABLES = ("case_facts", "department_stints", "case_clocks")
# Removed with the registration row by the retention purge (facts and stints, which hold no
# personal data, stay for the reports of past years).
PURGED_WITH_REGISTRATION = ("case_clocks", "case_search")

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS case_facts (
        feedback_id uuid PRIMARY KEY,
        feedback_number text NOT NULL UNIQUE,
        customer_ref text NOT NULL,
        received_at timestamptz NOT NULL,
        registered_at timestamptz NOT NULL,
        channel text NOT NULL,
        feedback_type text,
        category text,
        subcategory text,
        priority text,
        department text,
        owner text,
        customer_tier text NOT NULL,
        product_model text,
        emotion text,
        status text NOT NULL,
        first_response_at timestamptz,
        resolved_at timestamptz,
        result text,
        confirmed_at timestamptz,
        satisfied boolean,
        closed_at timestamptz,
        archived_at timestamptz,
        first_response_business_minutes double precision,
        first_response_calendar_minutes double precision,
        resolution_business_minutes double precision,
        resolution_calendar_minutes double precision,
        csat integer,
        nps integer,
        reopened_count integer NOT NULL DEFAULT 0,
        repeat boolean NOT NULL DEFAULT false,
        escalation_level integer NOT NULL DEFAULT 0,
        breached_count integer NOT NULL DEFAULT 0,
        last_version integer NOT NULL,
        updated_at timestamptz NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS case_facts_received_at ON case_facts (received_at)",
    "CREATE INDEX IF NOT EXISTS case_facts_customer ON case_facts (customer_ref, received_at)",
    """
    CREATE TABLE IF NOT EXISTS department_stints (
        feedback_id uuid NOT NULL,
        seq integer NOT NULL,
        department text NOT NULL,
        moved_in_at timestamptz NOT NULL,
        moved_out_at timestamptz,
        reason text,
        business_minutes double precision,
        calendar_minutes double precision,
        PRIMARY KEY (feedback_id, seq)
    )
    """,
    "CREATE INDEX IF NOT EXISTS department_stints_department ON department_stints (department, moved_in_at)",
    """
    CREATE TABLE IF NOT EXISTS case_clocks (
        feedback_id uuid NOT NULL,
        clock_key text NOT NULL,
        clock text NOT NULL,
        subject text,
        time text NOT NULL,
        target text NOT NULL,
        started_at timestamptz NOT NULL,
        due_at timestamptz NOT NULL,
        warn_at timestamptz NOT NULL,
        state text NOT NULL,
        paused_at timestamptz,
        warned boolean NOT NULL DEFAULT false,
        breached boolean NOT NULL DEFAULT false,
        met_at timestamptz,
        late boolean,
        PRIMARY KEY (feedback_id, clock_key)
    )
    """,
    "CREATE INDEX IF NOT EXISTS case_clocks_open ON case_clocks (due_at) WHERE state <> 'met'",
    # The work list's next due time per case: min(due_at) of the running clocks read from
    # the index alone (an index-only probe per listed case instead of a heap visit).
    "CREATE INDEX IF NOT EXISTS case_clocks_running ON case_clocks (feedback_id, due_at) "
    "WHERE state = 'running'",
]
