-- meshscale schema version 1 (commit c5c6fea and before), as peewee created it: no version marker.
CREATE TABLE "nodes" ("id" INTEGER NOT NULL PRIMARY KEY, "machine_key" BLOB NOT NULL, "node_key" BLOB NOT NULL, "disco_key" BLOB NOT NULL, "hostname" VARCHAR(255) NOT NULL, "given_name" VARCHAR(255) NOT NULL, "user_id" INTEGER, "tags" TEXT NOT NULL, "ipv4" VARCHAR(255), "ipv6" VARCHAR(255), "hostinfo" TEXT NOT NULL, "endpoints" TEXT NOT NULL, "home_derp" INTEGER NOT NULL, "created_at" DATETIME NOT NULL, "last_seen" DATETIME, "expiry" DATETIME, "auth_key_id" INTEGER, "ephemeral" INTEGER NOT NULL, "register_method" VARCHAR(255) NOT NULL, "approved_routes" TEXT NOT NULL, "capver" INTEGER NOT NULL);
CREATE UNIQUE INDEX "noderow_machine_key" ON "nodes" ("machine_key");
CREATE UNIQUE INDEX "noderow_node_key" ON "nodes" ("node_key");
CREATE UNIQUE INDEX "noderow_given_name" ON "nodes" ("given_name");
CREATE UNIQUE INDEX "noderow_ipv4" ON "nodes" ("ipv4");
CREATE UNIQUE INDEX "noderow_ipv6" ON "nodes" ("ipv6");
CREATE TABLE "policies" ("id" INTEGER NOT NULL PRIMARY KEY, "data" TEXT NOT NULL, "created_at" DATETIME NOT NULL);
CREATE TABLE "pre_auth_keys" ("id" INTEGER NOT NULL PRIMARY KEY, "prefix" VARCHAR(255) NOT NULL, "secret_hash" BLOB NOT NULL, "user_id" INTEGER, "reusable" INTEGER NOT NULL, "ephemeral" INTEGER NOT NULL, "used" INTEGER NOT NULL, "expiration" DATETIME, "created_at" DATETIME NOT NULL, "tags" TEXT NOT NULL);
CREATE UNIQUE INDEX "preauthkeyrow_prefix" ON "pre_auth_keys" ("prefix");
CREATE TABLE "users" ("id" INTEGER NOT NULL PRIMARY KEY, "name" VARCHAR(255) NOT NULL, "display_name" VARCHAR(255) NOT NULL, "email" VARCHAR(255) NOT NULL, "provider" VARCHAR(255) NOT NULL, "provider_id" VARCHAR(255) NOT NULL, "created_at" DATETIME NOT NULL);
CREATE UNIQUE INDEX "userrow_name" ON "users" ("name");
