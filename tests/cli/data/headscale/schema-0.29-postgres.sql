-- The tables of headscale 0.29 as GORM makes them on PostgreSQL (the column names of
-- hscontrol/db/schema.sql at v0.29.2 with PostgreSQL types); written for meshscale's import tests.
CREATE TABLE migrations (id text PRIMARY KEY);
CREATE TABLE users (id bigserial PRIMARY KEY, name text, display_name text, email text, provider_identifier text, provider text, profile_pic_url text, created_at timestamptz, updated_at timestamptz, deleted_at timestamptz);
CREATE TABLE pre_auth_keys (id bigserial PRIMARY KEY, key text, prefix text, hash bytea, user_id bigint, reusable boolean, ephemeral boolean DEFAULT false, used boolean DEFAULT false, tags text, expiration timestamptz, created_at timestamptz);
CREATE TABLE api_keys (id bigserial PRIMARY KEY, prefix text, hash bytea, expiration timestamptz, last_seen timestamptz, created_at timestamptz);
CREATE TABLE nodes (id bigserial PRIMARY KEY, machine_key text, node_key text, disco_key text, endpoints text, host_info text, ipv4 text, ipv6 text, hostname text, given_name varchar(63), user_id bigint, register_method text, tags text, auth_key_id bigint, last_seen timestamptz, expiry timestamptz, approved_routes text, created_at timestamptz, updated_at timestamptz, deleted_at timestamptz);
CREATE TABLE policies (id bigserial PRIMARY KEY, data text, created_at timestamptz, updated_at timestamptz, deleted_at timestamptz);
CREATE TABLE database_versions (id bigint PRIMARY KEY, version text NOT NULL, updated_at timestamptz);
INSERT INTO database_versions VALUES (1, 'v0.29.2', '2026-07-01 00:00:00+00:00');
