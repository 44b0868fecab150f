-- The users service's directory, PostgreSQL dialect. Keep it in step with
-- ../sqlite/0001_init.sql: the same tables, columns and indexes.
--
-- Every object table holds the object's stored JSON in data (Meta
-- included) plus the columns that keys, references, filters and the list
-- order need. Memberships (User.Groups, Group.Members, SharedMailbox.Staff)
-- live only in group_members and shared_mailbox_staff. Times are
-- microseconds since the Unix epoch (UTC). Ordering columns use the "C"
-- collation so that lists sort bytewise, as SQLite does.

-- change_seq is the change log's single-row counter; see the comment on
-- lockSeq in tx.go.
CREATE TABLE change_seq (
	id  integer PRIMARY KEY CHECK (id = 1),
	seq bigint  NOT NULL
);
INSERT INTO change_seq (id, seq) VALUES (1, 0);

CREATE TABLE sites (
	id      text COLLATE "C" PRIMARY KEY, -- the site's name
	version bigint NOT NULL,
	data    jsonb  NOT NULL
);

CREATE TABLE users (
	id       text COLLATE "C" PRIMARY KEY,
	username text COLLATE "C" NOT NULL UNIQUE,
	site     text COLLATE "C" NOT NULL REFERENCES sites (id),
	enabled  boolean NOT NULL,
	search   text    NOT NULL, -- lower-cased username, display name and addresses, for q
	version  bigint  NOT NULL,
	data     jsonb   NOT NULL
);
CREATE INDEX users_order ON users (username, id);
CREATE INDEX users_site ON users (site, username, id);
-- The enabled filter, alone and with a site: the count and the page of a
-- filtered list both read one range of an index.
CREATE INDEX users_enabled ON users (enabled, username, id);
CREATE INDEX users_site_enabled ON users (site, enabled, username, id);

CREATE TABLE mail_groups (
	id      text COLLATE "C" PRIMARY KEY,
	name    text COLLATE "C" NOT NULL UNIQUE,
	version bigint NOT NULL,
	data    jsonb  NOT NULL
);
CREATE INDEX mail_groups_order ON mail_groups (name, id);

-- One row per member: exactly one of user_id and member_group_id is set.
CREATE TABLE group_members (
	group_id        text COLLATE "C" NOT NULL REFERENCES mail_groups (id) ON DELETE CASCADE,
	position        integer NOT NULL,
	user_id         text COLLATE "C" REFERENCES users (id),
	member_group_id text COLLATE "C" REFERENCES mail_groups (id),
	PRIMARY KEY (group_id, position),
	UNIQUE (group_id, user_id),
	UNIQUE (group_id, member_group_id),
	CHECK ((user_id IS NULL) <> (member_group_id IS NULL))
);
CREATE INDEX group_members_user ON group_members (user_id);
CREATE INDEX group_members_group ON group_members (member_group_id);

CREATE TABLE pop3_accounts (
	id          text COLLATE "C" PRIMARY KEY,
	name        text COLLATE "C" NOT NULL UNIQUE,
	site        text COLLATE "C" NOT NULL REFERENCES sites (id),
	target_user text COLLATE "C" REFERENCES users (id),
	postmaster  text COLLATE "C" REFERENCES users (id),
	version     bigint NOT NULL,
	data        jsonb  NOT NULL
);
CREATE INDEX pop3_accounts_order ON pop3_accounts (name, id);
CREATE INDEX pop3_accounts_site ON pop3_accounts (site, name, id);
CREATE INDEX pop3_accounts_target_user ON pop3_accounts (target_user);
CREATE INDEX pop3_accounts_postmaster ON pop3_accounts (postmaster);

CREATE TABLE shared_mailboxes (
	id      text COLLATE "C" PRIMARY KEY,
	address text COLLATE "C" NOT NULL,
	manager text COLLATE "C" REFERENCES users (id),
	version bigint NOT NULL,
	data    jsonb  NOT NULL
);
CREATE INDEX shared_mailboxes_order ON shared_mailboxes (address, id);
CREATE INDEX shared_mailboxes_manager ON shared_mailboxes (manager);

CREATE TABLE shared_mailbox_staff (
	mailbox_id text COLLATE "C" NOT NULL REFERENCES shared_mailboxes (id) ON DELETE CASCADE,
	position   integer NOT NULL,
	user_id    text COLLATE "C" NOT NULL REFERENCES users (id),
	PRIMARY KEY (mailbox_id, position),
	UNIQUE (mailbox_id, user_id)
);
CREATE INDEX shared_mailbox_staff_user ON shared_mailbox_staff (user_id);

-- Every address of a user (primary and aliases), a group and a shared
-- mailbox, lower-cased: one owner each.
CREATE TABLE addresses (
	address    text COLLATE "C" PRIMARY KEY,
	owner_kind text COLLATE "C" NOT NULL,
	owner_id   text COLLATE "C" NOT NULL
);
CREATE INDEX addresses_owner ON addresses (owner_kind, owner_id);

CREATE TABLE templates (
	id      text COLLATE "C" PRIMARY KEY,
	name    text COLLATE "C" NOT NULL UNIQUE,
	site    text COLLATE "C" REFERENCES sites (id),
	version bigint NOT NULL,
	data    jsonb  NOT NULL
);
CREATE INDEX templates_order ON templates (name, id);
CREATE INDEX templates_site ON templates (site);

CREATE TABLE tokens (
	id           text COLLATE "C" PRIMARY KEY,
	name         text COLLATE "C" NOT NULL,
	role         text COLLATE "C" NOT NULL,
	site         text COLLATE "C" REFERENCES sites (id),
	secret_hash  text COLLATE "C" NOT NULL UNIQUE,
	last_used_us bigint,
	version      bigint NOT NULL,
	data         jsonb  NOT NULL
);
CREATE INDEX tokens_order ON tokens (name, id);
CREATE INDEX tokens_site ON tokens (site);

CREATE TABLE changes (
	seq       bigint PRIMARY KEY,
	at_us     bigint NOT NULL,
	kind      text   NOT NULL,
	object_id text   NOT NULL,
	op        text   NOT NULL,
	actor     text   NOT NULL,
	data      jsonb
);

CREATE TABLE audit_log (
	id          bigserial PRIMARY KEY,
	at_us       bigint NOT NULL,
	actor       text COLLATE "C" NOT NULL,
	action      text COLLATE "C" NOT NULL,
	target_kind text COLLATE "C" NOT NULL,
	target_id   text COLLATE "C" NOT NULL,
	diff        jsonb
);
CREATE INDEX audit_log_at ON audit_log (at_us);
CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_action ON audit_log (action, id);
CREATE INDEX audit_log_target ON audit_log (target_kind, target_id, id);

CREATE TABLE outbox_positions (
	name text PRIMARY KEY,
	seq  bigint NOT NULL
);
