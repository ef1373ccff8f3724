-- The tables of headscale 0.27 (hscontrol/db/schema.sql at v0.27.0), column names and types as
-- facts of the format; written for meshscale's import tests. The last release whose pre-auth
-- keys are plain text (``key``) and whose nodes' tags are ``forced_tags``.
CREATE TABLE migrations (id text, PRIMARY KEY (id));
CREATE TABLE users (id integer PRIMARY KEY AUTOINCREMENT, name text, display_name text, email text, provider_identifier text, provider text, profile_pic_url text, created_at datetime, updated_at datetime, deleted_at datetime);
CREATE TABLE pre_auth_keys (id integer PRIMARY KEY AUTOINCREMENT, key text, user_id integer, reusable numeric, ephemeral numeric DEFAULT false, used numeric DEFAULT false, tags text, expiration datetime, created_at datetime);
CREATE TABLE api_keys (id integer PRIMARY KEY AUTOINCREMENT, prefix text, hash blob, expiration datetime, last_seen datetime, created_at datetime);
CREATE UNIQUE INDEX idx_api_keys_prefix ON api_keys(prefix);
CREATE TABLE nodes (id integer PRIMARY KEY AUTOINCREMENT, machine_key text, node_key text, disco_key text, endpoints text, host_info text, ipv4 text, ipv6 text, hostname text, given_name varchar(63), user_id integer, register_method text, forced_tags text, auth_key_id integer, last_seen datetime, expiry datetime, approved_routes text, created_at datetime, updated_at datetime, deleted_at datetime);
CREATE TABLE policies (id integer PRIMARY KEY AUTOINCREMENT, data text, created_at datetime, updated_at datetime, deleted_at datetime);
INSERT INTO migrations VALUES ('202312101416'), ('202312101430'), ('202402151347'), ('2024041121742'), ('202406021630'), ('202409271400'), ('202407191627'), ('202408181235'), ('202501221827'), ('202501311657'), ('202502070949'), ('202502131714'), ('202502171819'), ('202505091439'), ('202505141324'), ('202507021200');
