-- The tables headscale 0.23 made (GORM AutoMigrate of its types at v0.23.0), column names and
-- types as facts of the format; written for meshscale's import tests.
CREATE TABLE migrations (id text, PRIMARY KEY (id));
CREATE TABLE users (id integer PRIMARY KEY AUTOINCREMENT, created_at datetime, updated_at datetime, deleted_at datetime, name text UNIQUE);
CREATE TABLE pre_auth_keys (id integer PRIMARY KEY AUTOINCREMENT, key text, user_id integer, reusable numeric, ephemeral numeric DEFAULT false, used numeric DEFAULT false, created_at datetime, expiration datetime);
CREATE TABLE pre_auth_key_acl_tags (id integer PRIMARY KEY AUTOINCREMENT, pre_auth_key_id integer, tag text);
CREATE TABLE api_keys (id integer PRIMARY KEY AUTOINCREMENT, prefix text UNIQUE, hash blob, created_at datetime, expiration datetime, last_seen datetime);
CREATE TABLE nodes (id integer PRIMARY KEY AUTOINCREMENT, machine_key text, node_key text, disco_key text, endpoints text, host_info text, ipv4 text, ipv6 text, hostname text, given_name varchar(63), user_id integer, register_method text, forced_tags text, auth_key_id integer, last_seen datetime, expiry datetime, created_at datetime, updated_at datetime, deleted_at datetime);
CREATE TABLE routes (id integer PRIMARY KEY AUTOINCREMENT, created_at datetime, updated_at datetime, deleted_at datetime, node_id integer, prefix text, advertised numeric, enabled numeric, is_primary numeric);
CREATE TABLE policies (id integer PRIMARY KEY AUTOINCREMENT, created_at datetime, updated_at datetime, deleted_at datetime, data text);
INSERT INTO migrations VALUES ('202312101416'), ('202312101430'), ('202402151347'), ('2024041121742'), ('202406021630');
