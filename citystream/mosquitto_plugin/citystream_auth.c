/*
 * citystream_auth: CityStream's Mosquitto plugin (Mosquitto >= 2.0, plugin API version 5).
 *
 * What it does, and why here (docs/mqtt.md, "Who may do what over MQTT"):
 *
 * 1. One identity for HTTP and MQTT. A client logs in with what it uses over HTTP: an API key (key id as
 *    user name, secret as password, or the whole key as password), a CityStream user, an OIDC access
 *    token (as the password) or the operator token. The plugin does not judge credentials itself: it asks
 *    the platform (POST <decision_url>/connect) and caches the answer for cache_seconds. Every
 *    revalidate_seconds it asks the platform which of the connected clients' credentials are no longer
 *    valid (revoked key, deleted user, changed roles) and disconnects those, and an OIDC client when its
 *    token expires: revocation reaches the broker within seconds.
 *    Two accounts stay in Mosquitto's password file, checked there: the platform's own (platform_user:
 *    the MQTT bridge and the notifier, which may do everything) and, if configured, a shared device
 *    account (account_user) that may create Observations anywhere, as before per-principal identities.
 *    Anonymous clients read public data if anonymous_read lists topic filters.
 *
 * 2. Publishing creates only where the principal may create. A publish is allowed only on a create topic
 *    where the platform says the principal may create (POST <decision_url>/publish, cached per client and
 *    topic); a refusal is "not authorised" in an MQTT 5 PUBACK, a report on citystream/errors/<topic>
 *    that only the publisher may read, and a count. An allowed publish is moved to the internal topic
 *    <ingest_prefix><topic> that only the platform reads, and stamped with the principal the platform
 *    described at CONNECT (user property citystream-principal) and the client id (citystream-client-id).
 *    User properties starting "citystream-" that a client sends are removed first: a client cannot forge
 *    an identity. So the bridge can check an Observation whose Datastream is in the body against its
 *    publisher, and no subscriber ever receives a device's raw publish (STA 1.1 §14.1: a subscriber gets
 *    the entity as GET returns it), with MQTT 3.1.1 and 5 alike.
 *
 * 3. Subscribers receive only what they may read. The platform publishes each notification with the user
 *    property citystream-audience: absent for public data, else "r[;p=<Project id>][;o=<owner authId>]"
 *    (sensorthings/query/visibility.py). The plugin keeps the audience of each notification (by a hash of
 *    its topic and payload, from MOSQ_EVT_MESSAGE, removing the property) and checks it on every delivery
 *    (MOSQ_EVT_ACL_CHECK, read access: Mosquitto 2.0 passes topic and payload there, not properties), so
 *    a wildcard (v1.1/#) or a shared topic (v1.1/Observations) delivers to each subscriber only what it
 *    may read. A message on a readable topic whose audience the plugin does not know (a client's Will, a
 *    notification older than the plugin's memory) reaches only principals who may read everything, and a
 *    client reconnecting to its session as the same principal (its queued messages were checked when they
 *    were queued).
 *
 * 4. The bridge's client id and shared subscription group are the platform's: anyone else could take over
 *    the bridge's persistent session, or join its group and be handed part of the devices' Observations,
 *    which would then never be stored although the device was told they were delivered.
 *
 * Every few seconds the plugin publishes its counters on $SYS/broker/citystream/plugin (read by the
 * platform: its presence tells the notifier that audiences are enforced; the counts go to /metrics).
 *
 * Mosquitto asks the v5 plugin callbacks of an event in registration order until one answers something
 * else than MOSQ_ERR_PLUGIN_DEFER; a plugin registers before the password file's callback, so these see
 * every CONNECT first. They defer only the two password-file accounts' passwords; every ACL question is
 * answered here (the config has no acl_file).
 *
 * The platform is asked synchronously, in the broker's one thread, with short timeouts (timeout_ms): a
 * cached answer costs nothing, an uncached one a loopback HTTP round trip (~1 ms). If the platform cannot
 * be reached, new logins and uncached publishes are refused (fail closed) and connected clients stay.
 *
 * Options (`plugin_opt_<name> <value>` lines after the `plugin` line):
 *   platform_user        (required) the platform's account
 *   bridge_client_id     (required) reserved client id prefix: the bridge's id and everything starting with it
 *   bridge_group         (required) the reserved shared subscription group: `$share/<bridge_group>/...`
 *   ingest_prefix        (required) where allowed creates are moved to, e.g. "citystream/ingest/"
 *   readable             (required) topic filters (space separated) that clients may read at all
 *   anonymous_read       topic filters anonymous clients may read ("" or absent: anonymous refused)
 *   account_user         a password-file device account that may create anywhere and read public data
 *   account_write        the topic filters (space separated) it may publish to: the create topics
 *   decision_url         the platform's decision endpoint, e.g. http://127.0.0.1:8080/internal/mqtt
 *                        (absent: only the accounts and anonymous clients can connect)
 *   decision_secret_file file whose first line is the secret sent to the decision endpoint (header
 *                        X-CityStream-Broker-Secret; the platform's own MQTT password)
 *   cache_seconds        how long a login or publish decision is reused (default 10)
 *   revalidate_seconds   how often connected credentials are revalidated (default 2)
 *   timeout_ms           limit of one request to the platform (default 2000)
 *   logins_per_second    uncached logins asked of the platform at most per second; more are refused at
 *                        once (default 50: a flood of wrong passwords must not stall the broker)
 *
 * Build (Debian packages gcc, libc6-dev, mosquitto-dev, libmosquitto-dev, libcurl4-openssl-dev,
 * libcjson-dev, uthash-dev; the broker provides the mosquitto_* functions at load time):
 *   cc -shared -fPIC -O2 -Wall -Wextra -o citystream_auth.so citystream_auth.c -lcurl -lcjson
 * citystream/embedded/mosquitto_config.py builds it on first use for `citystream up` and the tests;
 * deploy/mosquitto/Dockerfile builds it for docker-compose. Keep it warning-free (the tests compile it
 * with -Werror).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <uthash.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#define CS_PLUGIN "citystream_auth"
#define CS_MAX_OPTION 4096          /* longest option value accepted */
#define CS_MAX_RESPONSE (64 * 1024) /* longest answer taken from the platform */
#define CS_MAX_STAMP 4096           /* longest principal description stamped on a message */
#define CS_MAX_FILTERS 32
#define CS_MAX_PROJECTS 1024
#define CS_MAX_TOPIC_CACHE 64       /* publish decisions kept per client */
#define CS_MAX_LOGIN_CACHE 10000
#define CS_MAX_AUDIENCES 100000
#define CS_AUDIENCE_SLOTS (1u << 18) /* per generation of remembered notifications (two generations) */
#define CS_HEARTBEAT_SECONDS 2
#define CS_SHARE_PREFIX "$share/"
#define CS_PREFIX_PROPERTY "citystream-"
#define CS_AUDIENCE_PROPERTY "citystream-audience"
#define CS_PRINCIPAL_PROPERTY "citystream-principal"
#define CS_CLIENT_PROPERTY "citystream-client-id"
#define CS_ERROR_PREFIX "citystream/errors/"
#define CS_SECRET_HEADER "X-CityStream-Broker-Secret: "

/* ------------------------------------------------------------------------------------------ types */

/* Who may read a notification: NULL is public; otherwise restricted, readable by principals with read
 * everywhere, with read for `project` (if >= 0), or whose auth id is `owner` (if set). Interned. */
struct cs_audience {
	char *text;
	long long project;
	char *owner;
	UT_hash_handle hh;
};

/* What a connected principal may read and who it is, from the platform's answer at CONNECT. */
struct cs_scope {
	bool read_public;
	bool read_all;
	long long *projects;
	size_t project_count;
	char *auth_id;
	char *stamp;      /* the principal as the platform described it, stamped on its creates */
	char *revocation; /* what the platform revalidates; NULL: nothing to revalidate */
	time_t expires;   /* 0: no expiry */
	bool create_anywhere; /* the account: publish decisions need not be asked */
	bool anonymous;       /* reads only anonymous_read */
};

struct cs_topic_decision {
	char *topic;
	bool allowed;
	char *reason; /* the platform's, for a refusal */
	time_t at;
	UT_hash_handle hh;
};

struct cs_client {
	char *client_id;
	const struct mosquitto *connection; /* the connection it was let in on (kept while its session waits) */
	bool online;
	struct cs_scope scope;
	char *previous_stamp;  /* the principal of this client id's previous connection */
	bool reconnecting;     /* set at login to the same principal, until the next tick */
	struct cs_topic_decision *topics;
	unsigned topic_count;
	UT_hash_handle hh;
};

struct cs_login {
	char *key; /* user name NUL password: compared whole, never hashed */
	size_t key_len;
	struct cs_scope scope;
	time_t at;
	UT_hash_handle hh;
};

struct cs_slot {
	uint64_t hash;
	const struct cs_audience *audience; /* NULL slot: empty; &cs_public: public */
};

struct cs_counters {
	unsigned long long connect_refused;
	unsigned long long subscribe_refused;
	unsigned long long publish_refused;
	unsigned long long delivery_withheld;
	unsigned long long platform_errors;
	unsigned long long kicked;
};

struct cs_filters {
	char *items[CS_MAX_FILTERS];
	int count;
};

struct cs_config {
	mosquitto_plugin_id_t *pid;
	char *platform_user;
	char *bridge_client_id;
	size_t bridge_client_id_len;
	char *bridge_group;
	size_t bridge_group_len;
	char *ingest_prefix;
	size_t ingest_prefix_len;
	char *account_user;
	struct cs_filters readable;
	struct cs_filters anonymous_read;
	struct cs_filters account_write;
	char *decision_url;
	char *authorization; /* the secret's header line */
	long cache_seconds;
	long revalidate_seconds;
	long timeout_ms;
	CURL *curl;
	struct cs_client *clients;
	struct cs_login *logins;
	unsigned login_count;
	struct cs_audience *audiences;
	unsigned audience_count;
	struct cs_slot *slots[2]; /* [0]: current generation, [1]: previous */
	unsigned slot_count;
	time_t next_revalidation;
	time_t next_heartbeat;
	long logins_per_second; /* logins asked of the platform at most, per second */
	time_t login_second;
	long logins_asked;
	struct cs_counters counters;
};

static struct cs_audience cs_public = {.text = NULL, .project = -1, .owner = NULL};
static struct cs_audience cs_everything = {.text = NULL, .project = -1, .owner = NULL}; /* unknown: read_all only */

/* ---------------------------------------------------------------------------------------- helpers */

static char *cs_strdup(const char *s)
{
	return s != NULL ? mosquitto_strdup(s) : NULL;
}

static bool cs_eq(const char *a, const char *b)
{
	return a != NULL && b != NULL && strcmp(a, b) == 0;
}

/* Comparing secrets: the time does not depend on where they differ. */
static bool cs_same_bytes(const char *a, size_t a_len, const char *b, size_t b_len)
{
	unsigned char diff = 0;
	size_t i;

	if(a_len != b_len) {
		return false;
	}
	for(i = 0; i < a_len; i++) {
		diff |= (unsigned char)(a[i] ^ b[i]);
	}
	return diff == 0;
}

/* FNV-1a, 64 bits, of the topic, a NUL and the payload: the key of a notification's audience. */
static uint64_t cs_message_hash(const char *topic, const void *payload, uint32_t payloadlen)
{
	uint64_t h = 1469598103934665603ULL;
	const unsigned char *p;
	uint32_t i;

	for(p = (const unsigned char *)topic; *p != '\0'; p++) {
		h = (h ^ *p) * 1099511628211ULL;
	}
	h = (h ^ 0) * 1099511628211ULL;
	p = payload;
	for(i = 0; p != NULL && i < payloadlen; i++) {
		h = (h ^ p[i]) * 1099511628211ULL;
	}
	return h != 0 ? h : 1; /* 0 marks an empty slot */
}

static bool cs_matches_any(const struct cs_filters *filters, const char *topic)
{
	bool match;
	int i;

	for(i = 0; i < filters->count; i++) {
		match = false;
		if(mosquitto_topic_matches_sub(filters->items[i], topic, &match) == MOSQ_ERR_SUCCESS && match) {
			return true;
		}
	}
	return false;
}

static void cs_scope_free(struct cs_scope *scope)
{
	free(scope->projects);
	mosquitto_free(scope->auth_id);
	mosquitto_free(scope->stamp);
	mosquitto_free(scope->revocation);
	memset(scope, 0, sizeof(*scope));
}

static bool cs_scope_copy(struct cs_scope *to, const struct cs_scope *from)
{
	memset(to, 0, sizeof(*to));
	*to = *from;
	to->projects = NULL;
	to->auth_id = cs_strdup(from->auth_id);
	to->stamp = cs_strdup(from->stamp);
	to->revocation = cs_strdup(from->revocation);
	if(from->project_count > 0) {
		to->projects = malloc(from->project_count * sizeof(*to->projects));
		if(to->projects != NULL) {
			memcpy(to->projects, from->projects, from->project_count * sizeof(*to->projects));
		}
	}
	if((from->auth_id && !to->auth_id) || (from->stamp && !to->stamp) || (from->revocation && !to->revocation)
			|| (from->project_count > 0 && !to->projects)) {
		cs_scope_free(to);
		return false;
	}
	return true;
}

/* --------------------------------------------------------------------------------- the audiences */

/* "r[;p=<id>][;o=<owner>]" (the owner runs to the end), interned; NULL text or "" is public. */
static const struct cs_audience *cs_audience(struct cs_config *cfg, const char *text)
{
	struct cs_audience *found = NULL;
	const char *rest;
	char *end;

	if(text == NULL || text[0] == '\0') {
		return &cs_public;
	}
	HASH_FIND_STR(cfg->audiences, text, found);
	if(found != NULL) {
		return found;
	}
	if(cfg->audience_count >= CS_MAX_AUDIENCES || text[0] != 'r') {
		return &cs_everything; /* fail closed: only principals who read everything */
	}
	found = mosquitto_calloc(1, sizeof(*found));
	if(found == NULL) {
		return &cs_everything;
	}
	found->project = -1;
	found->text = mosquitto_strdup(text);
	rest = text + 1;
	if(strncmp(rest, ";p=", 3) == 0) {
		found->project = strtoll(rest + 3, &end, 10);
		rest = end;
	}
	if(strncmp(rest, ";o=", 3) == 0) {
		found->owner = mosquitto_strdup(rest + 3);
	}else if(rest[0] != '\0') {
		mosquitto_free(found->text);
		mosquitto_free(found);
		return &cs_everything;
	}
	if(found->text == NULL) {
		mosquitto_free(found->owner);
		mosquitto_free(found);
		return &cs_everything;
	}
	HASH_ADD_KEYPTR(hh, cfg->audiences, found->text, strlen(found->text), found);
	cfg->audience_count++;
	return found;
}

static bool cs_may_read(const struct cs_scope *scope, const struct cs_audience *audience)
{
	size_t i;

	if(scope->read_all) {
		return true;
	}
	if(audience == &cs_public) {
		return scope->read_public;
	}
	if(audience == &cs_everything) {
		return false;
	}
	if(audience->owner != NULL && cs_eq(audience->owner, scope->auth_id)) {
		return true;
	}
	for(i = 0; audience->project >= 0 && i < scope->project_count; i++) {
		if(scope->projects[i] == audience->project) {
			return true;
		}
	}
	return false;
}

/* Two generations of open-addressing slots: a new generation starts when the current one is half full,
 * so the plugin remembers the last 2^17..2^18 notifications in a fixed 8 MiB. */
static void cs_remember(struct cs_config *cfg, uint64_t hash, const struct cs_audience *audience)
{
	struct cs_slot *slots = cfg->slots[0];
	uint32_t i;

	if(cfg->slot_count >= CS_AUDIENCE_SLOTS / 2) {
		memset(cfg->slots[1], 0, CS_AUDIENCE_SLOTS * sizeof(struct cs_slot));
		cfg->slots[0] = cfg->slots[1];
		cfg->slots[1] = slots;
		slots = cfg->slots[0];
		cfg->slot_count = 0;
	}
	for(i = (uint32_t)hash & (CS_AUDIENCE_SLOTS - 1);; i = (i + 1) & (CS_AUDIENCE_SLOTS - 1)) {
		if(slots[i].hash == 0) {
			cfg->slot_count++;
			break;
		}
		if(slots[i].hash == hash) {
			break;
		}
	}
	slots[i].hash = hash;
	slots[i].audience = audience;
}

static const struct cs_audience *cs_recall(const struct cs_config *cfg, uint64_t hash)
{
	int g;
	uint32_t i;

	for(g = 0; g < 2; g++) {
		const struct cs_slot *slots = cfg->slots[g];
		for(i = (uint32_t)hash & (CS_AUDIENCE_SLOTS - 1); slots[i].hash != 0; i = (i + 1) & (CS_AUDIENCE_SLOTS - 1)) {
			if(slots[i].hash == hash) {
				return slots[i].audience;
			}
		}
	}
	return NULL;
}

/* ----------------------------------------------------------------------------- asking the platform */

struct cs_buffer {
	char *data;
	size_t len;
	bool overflow;
};

static size_t cs_collect(char *chunk, size_t size, size_t count, void *userdata)
{
	struct cs_buffer *buffer = userdata;
	size_t n = size * count;
	char *grown;

	if(buffer->len + n > CS_MAX_RESPONSE) {
		buffer->overflow = true;
		return 0; /* ends the transfer */
	}
	grown = realloc(buffer->data, buffer->len + n + 1);
	if(grown == NULL) {
		return 0;
	}
	buffer->data = grown;
	memcpy(buffer->data + buffer->len, chunk, n);
	buffer->len += n;
	buffer->data[buffer->len] = '\0';
	return n;
}

/* POST `body` as JSON to <decision_url>/<path>; the parsed answer of a 200, or NULL (logged). */
static cJSON *cs_ask(struct cs_config *cfg, const char *path, cJSON *body)
{
	struct cs_buffer buffer = {NULL, 0, false};
	struct curl_slist *headers = NULL;
	char url[CS_MAX_OPTION + 64];
	char *text;
	cJSON *answer = NULL;
	long status = 0;
	CURLcode rc;

	if(cfg->decision_url == NULL || cfg->curl == NULL) {
		return NULL;
	}
	text = cJSON_PrintUnformatted(body);
	if(text == NULL) {
		return NULL;
	}
	snprintf(url, sizeof(url), "%s/%s", cfg->decision_url, path);
	headers = curl_slist_append(headers, "Content-Type: application/json");
	if(cfg->authorization != NULL) {
		headers = curl_slist_append(headers, cfg->authorization);
	}
	curl_easy_setopt(cfg->curl, CURLOPT_URL, url);
	curl_easy_setopt(cfg->curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(cfg->curl, CURLOPT_POSTFIELDS, text);
	curl_easy_setopt(cfg->curl, CURLOPT_WRITEFUNCTION, cs_collect);
	curl_easy_setopt(cfg->curl, CURLOPT_WRITEDATA, &buffer);
	rc = curl_easy_perform(cfg->curl);
	if(rc == CURLE_OK) {
		curl_easy_getinfo(cfg->curl, CURLINFO_RESPONSE_CODE, &status);
	}
	if(rc != CURLE_OK || status != 200 || buffer.data == NULL) {
		cfg->counters.platform_errors++;
		mosquitto_log_printf(MOSQ_LOG_WARNING, CS_PLUGIN ": the platform did not answer %s: %s (HTTP %ld)%s",
				url, rc != CURLE_OK ? curl_easy_strerror(rc) : "no JSON", status,
				buffer.overflow ? ", answer too long" : "");
	}else{
		answer = cJSON_ParseWithLength(buffer.data, buffer.len);
	}
	curl_easy_setopt(cfg->curl, CURLOPT_HTTPHEADER, NULL);
	curl_easy_setopt(cfg->curl, CURLOPT_POSTFIELDS, NULL);
	curl_slist_free_all(headers);
	free(buffer.data);
	cJSON_free(text);
	return answer;
}

static char *cs_json_string(const cJSON *object, const char *name, size_t limit)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, name);

	if(!cJSON_IsString(item) || item->valuestring == NULL || strlen(item->valuestring) > limit) {
		return NULL;
	}
	return mosquitto_strdup(item->valuestring);
}

/* The scope in the platform's answer to /connect:
 * {"allow": true, "stamp": "...", "revocation": "..."|null, "expires": <unix s>|null,
 *  "read": {"public": bool, "all": bool, "projects": [ids], "principal_id": "..."|null}} */
static bool cs_parse_scope(const cJSON *answer, struct cs_scope *scope)
{
	const cJSON *read = cJSON_GetObjectItemCaseSensitive(answer, "read");
	const cJSON *projects = cJSON_GetObjectItemCaseSensitive(read, "projects");
	const cJSON *expires = cJSON_GetObjectItemCaseSensitive(answer, "expires");
	const cJSON *project;
	size_t n = 0;

	memset(scope, 0, sizeof(*scope));
	scope->stamp = cs_json_string(answer, "stamp", CS_MAX_STAMP);
	if(scope->stamp == NULL || !cJSON_IsObject(read)) {
		cs_scope_free(scope);
		return false;
	}
	scope->revocation = cs_json_string(answer, "revocation", CS_MAX_OPTION);
	scope->auth_id = cs_json_string(read, "principal_id", CS_MAX_OPTION);
	scope->read_public = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(read, "public"));
	scope->read_all = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(read, "all"));
	scope->expires = cJSON_IsNumber(expires) ? (time_t)expires->valuedouble : 0;
	if(cJSON_IsArray(projects) && cJSON_GetArraySize(projects) > 0) {
		size_t count = (size_t)cJSON_GetArraySize(projects);
		if(count > CS_MAX_PROJECTS) {
			count = CS_MAX_PROJECTS;
		}
		scope->projects = malloc(count * sizeof(*scope->projects));
		if(scope->projects == NULL) {
			cs_scope_free(scope);
			return false;
		}
		cJSON_ArrayForEach(project, projects) {
			if(n < count && cJSON_IsNumber(project)) {
				scope->projects[n++] = (long long)project->valuedouble;
			}
		}
		scope->project_count = n;
	}
	return true;
}

/* ------------------------------------------------------------------------------------- the clients */

static struct cs_client *cs_client(struct cs_config *cfg, const struct mosquitto *connection)
{
	const char *client_id = mosquitto_client_id(connection);
	struct cs_client *client = NULL;

	if(client_id == NULL) {
		return NULL;
	}
	HASH_FIND_STR(cfg->clients, client_id, client);
	return client;
}

static void cs_client_forget_topics(struct cs_client *client)
{
	struct cs_topic_decision *d, *tmp;

	HASH_ITER(hh, client->topics, d, tmp) {
		HASH_DEL(client->topics, d);
		mosquitto_free(d->topic);
		mosquitto_free(d->reason);
		mosquitto_free(d);
	}
	client->topic_count = 0;
}

static void cs_client_free(struct cs_config *cfg, struct cs_client *client)
{
	HASH_DEL(cfg->clients, client);
	cs_client_forget_topics(client);
	cs_scope_free(&client->scope);
	mosquitto_free(client->previous_stamp);
	mosquitto_free(client->client_id);
	mosquitto_free(client);
}

/* Record the principal of a connection that is being let in. */
static bool cs_admit(struct cs_config *cfg, const struct mosquitto *connection, const struct cs_scope *scope)
{
	const char *client_id = mosquitto_client_id(connection);
	struct cs_client *client = NULL;

	if(client_id == NULL) {
		return false;
	}
	HASH_FIND_STR(cfg->clients, client_id, client);
	if(client == NULL) {
		client = mosquitto_calloc(1, sizeof(*client));
		if(client == NULL || (client->client_id = mosquitto_strdup(client_id)) == NULL) {
			mosquitto_free(client);
			return false;
		}
		HASH_ADD_KEYPTR(hh, cfg->clients, client->client_id, strlen(client->client_id), client);
	}else{
		mosquitto_free(client->previous_stamp);
		client->previous_stamp = client->scope.stamp; /* kept: the queued messages were checked for it */
		client->scope.stamp = NULL;
		cs_scope_free(&client->scope);
		cs_client_forget_topics(client);
	}
	client->connection = connection;
	client->online = true;
	if(!cs_scope_copy(&client->scope, scope)) {
		cs_client_free(cfg, client);
		return false;
	}
	client->reconnecting = client->previous_stamp != NULL && cs_eq(client->previous_stamp, scope->stamp);
	return true;
}

/* -------------------------------------------------------------------------------------- logging in */

/* The shared device account, admitted once the password file has let it in: it creates Observations
 * anywhere (the bridge judges the topic) and reads public data. Its name is a plain word (citystream.embedded
 * checks it), so it needs no JSON escaping. */
static struct cs_client *cs_admit_account(struct cs_config *cfg, const struct mosquitto *connection)
{
	const char *username = mosquitto_client_username(connection);
	char stamp[CS_MAX_OPTION + 96];
	struct cs_scope account;

	if(username == NULL || strlen(username) > CS_MAX_OPTION / 2) {
		return NULL;
	}
	memset(&account, 0, sizeof(account));
	snprintf(stamp, sizeof(stamp),
			"{\"kind\":\"account\",\"name\":\"%s\",\"roles\":[\"create\"],\"auth_id\":\"%s\"}",
			username, username);
	account.read_public = true;
	account.create_anywhere = true;
	account.auth_id = (char *)username;
	account.stamp = stamp;
	return cs_admit(cfg, connection, &account) ? cs_client(cfg, connection) : NULL;
}

static bool cs_is_platform(const struct cs_config *cfg, const char *username)
{
	return username != NULL && strcmp(username, cfg->platform_user) == 0;
}

static bool cs_is_account(const struct cs_config *cfg, const char *username)
{
	return username != NULL && cfg->account_user != NULL && strcmp(username, cfg->account_user) == 0;
}

/* The bridge's client id, or one of its worker ids (`<id>-w<N>`): the configured id is a prefix. */
static bool cs_reserved_client_id(const struct cs_config *cfg, const char *client_id)
{
	return client_id != NULL && strncmp(client_id, cfg->bridge_client_id, cfg->bridge_client_id_len) == 0;
}

/* `$share/<bridge_group>/...`: the group is the whole second topic level, so "$share/citystream2/#" is not. */
static bool cs_bridge_share(const struct cs_config *cfg, const char *topic)
{
	const size_t prefix_len = sizeof(CS_SHARE_PREFIX) - 1;
	const char *group;

	if(topic == NULL || strncmp(topic, CS_SHARE_PREFIX, prefix_len) != 0) {
		return false;
	}
	group = topic + prefix_len;
	return strncmp(group, cfg->bridge_group, cfg->bridge_group_len) == 0
		&& (group[cfg->bridge_group_len] == '/' || group[cfg->bridge_group_len] == '\0');
}

static void cs_forget_login(struct cs_config *cfg, struct cs_login *login)
{
	HASH_DEL(cfg->logins, login);
	cfg->login_count--;
	cs_scope_free(&login->scope);
	memset(login->key, 0, login->key_len);
	mosquitto_free(login->key);
	mosquitto_free(login);
}

/* The platform's decision on a user name and password, cached for cache_seconds; NULL: refused. */
static const struct cs_scope *cs_login(struct cs_config *cfg, const char *username, const char *password,
		const char *client_id, time_t now)
{
	size_t user_len = username ? strlen(username) : 0, pass_len = password ? strlen(password) : 0;
	size_t key_len = user_len + 1 + pass_len;
	struct cs_login *login, *tmp;
	cJSON *body, *answer;
	char *key;

	if(user_len > CS_MAX_OPTION || pass_len > 16 * 1024) {
		return NULL;
	}
	key = mosquitto_malloc(key_len + 1);
	if(key == NULL) {
		return NULL;
	}
	memcpy(key, username ? username : "", user_len);
	key[user_len] = '\0';
	memcpy(key + user_len + 1, password ? password : "", pass_len);
	key[key_len] = '\0';
	HASH_ITER(hh, cfg->logins, login, tmp) {
		if(now - login->at >= cfg->cache_seconds) {
			cs_forget_login(cfg, login);
		}else if(cs_same_bytes(login->key, login->key_len, key, key_len)) {
			memset(key, 0, key_len);
			mosquitto_free(key);
			return &login->scope;
		}
	}
	if(now != cfg->login_second) {
		cfg->login_second = now;
		cfg->logins_asked = 0;
	}
	if(++cfg->logins_asked > cfg->logins_per_second) {
		/* A flood of logins (wrong passwords cost the platform a slow hash each) must not stall the
		 * broker's one thread: beyond the limit they are refused at once, and clients retry. */
		memset(key, 0, key_len);
		mosquitto_free(key);
		return NULL;
	}
	body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "username", username ? username : "");
	cJSON_AddStringToObject(body, "password", password ? password : "");
	cJSON_AddStringToObject(body, "client_id", client_id ? client_id : "");
	answer = cs_ask(cfg, "connect", body);
	cJSON_Delete(body);
	login = NULL;
	if(answer != NULL && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(answer, "allow"))) {
		login = mosquitto_calloc(1, sizeof(*login));
		if(login != NULL && cs_parse_scope(answer, &login->scope)) {
			login->key = key;
			login->key_len = key_len;
			login->at = now;
			key = NULL;
			if(cfg->login_count >= CS_MAX_LOGIN_CACHE) { /* a flood of distinct logins: start again */
				struct cs_login *old, *old_tmp;
				HASH_ITER(hh, cfg->logins, old, old_tmp) {
					cs_forget_login(cfg, old);
				}
			}
			HASH_ADD_KEYPTR(hh, cfg->logins, login->key, login->key_len, login);
			cfg->login_count++;
		}else{
			mosquitto_free(login);
			login = NULL;
		}
	}
	cJSON_Delete(answer);
	if(key != NULL) {
		memset(key, 0, key_len);
		mosquitto_free(key);
	}
	return login != NULL ? &login->scope : NULL;
}

static int cs_refuse_login(struct cs_config *cfg, const char *client_id, const char *username, const char *why)
{
	cfg->counters.connect_refused++;
	mosquitto_log_printf(MOSQ_LOG_NOTICE, CS_PLUGIN ": refused client %s (%s): %s",
			client_id ? client_id : "?", username ? username : "anonymous", why);
	return MOSQ_ERR_AUTH;
}

static int cs_on_basic_auth(int event, void *event_data, void *userdata)
{
	const struct mosquitto_evt_basic_auth *ed = event_data;
	struct cs_config *cfg = userdata;
	const char *client_id;
	const struct cs_scope *scope;
	struct cs_scope account;
	time_t now = time(NULL);

	(void)event;
	if(ed == NULL || ed->client == NULL || cfg == NULL) {
		return MOSQ_ERR_AUTH; /* never happens; fail closed */
	}
	client_id = mosquitto_client_id(ed->client);
	if(cs_reserved_client_id(cfg, client_id) && !cs_is_platform(cfg, ed->username)) {
		return cs_refuse_login(cfg, client_id, ed->username, "the client id is reserved to the platform's MQTT bridge");
	}
	if(cs_is_platform(cfg, ed->username)) {
		return MOSQ_ERR_PLUGIN_DEFER; /* the password file checks the password */
	}
	memset(&account, 0, sizeof(account));
	if(cs_is_account(cfg, ed->username)) {
		/* The password file checks the password; the account is admitted at its first ACL check, once it
		 * is known to have passed (admitting it here would let a wrong password replace the principal of
		 * a connected client with the same client id). */
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	if(ed->username == NULL && (ed->password == NULL || ed->password[0] == '\0')) {
		if(cfg->anonymous_read.count == 0) {
			return cs_refuse_login(cfg, client_id, NULL, "anonymous clients are not allowed (no anonymous read)");
		}
		account.read_public = true;
		account.anonymous = true;
		account.stamp = "{\"kind\":\"anonymous\",\"name\":\"anonymous\"}";
		return cs_admit(cfg, ed->client, &account) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_NOMEM;
	}
	if(cfg->decision_url == NULL) {
		return cs_refuse_login(cfg, client_id, ed->username, "no decision_url: only the broker's accounts may log in");
	}
	scope = cs_login(cfg, ed->username, ed->password, client_id, now);
	if(scope == NULL) {
		return cs_refuse_login(cfg, client_id, ed->username, "the platform does not know these credentials");
	}
	if(scope->expires != 0 && scope->expires <= now) {
		return cs_refuse_login(cfg, client_id, ed->username, "the token has expired");
	}
	return cs_admit(cfg, ed->client, scope) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_NOMEM;
}

/* ----------------------------------------------------------------------------------------- access */

/* A report of a refused publish on citystream/errors/<topic>, which only the publisher may read. */
static void cs_report_refusal(struct cs_config *cfg, const struct cs_client *client, const char *topic,
		const char *reason)
{
	cJSON *report = cJSON_CreateObject();
	char *text, *error_topic, audience_text[CS_MAX_OPTION + 16];
	const struct cs_audience *audience;
	size_t topic_len = strlen(topic), payload_len;

	cJSON_AddNumberToObject(report, "code", 403);
	cJSON_AddStringToObject(report, "type", "error");
	cJSON_AddStringToObject(report, "message", reason);
	cJSON_AddStringToObject(report, "topic", topic);
	/* The client id makes the reports of two publishers differ: the audience is remembered by content. */
	cJSON_AddStringToObject(report, "client_id", client->client_id);
	text = cJSON_PrintUnformatted(report);
	cJSON_Delete(report);
	error_topic = mosquitto_malloc(sizeof(CS_ERROR_PREFIX) + topic_len);
	if(text == NULL || error_topic == NULL) {
		cJSON_free(text);
		mosquitto_free(error_topic);
		return;
	}
	memcpy(error_topic, CS_ERROR_PREFIX, sizeof(CS_ERROR_PREFIX) - 1);
	memcpy(error_topic + sizeof(CS_ERROR_PREFIX) - 1, topic, topic_len + 1);
	snprintf(audience_text, sizeof(audience_text), "r;o=%s", client->scope.auth_id ? client->scope.auth_id : "");
	audience = client->scope.auth_id ? cs_audience(cfg, audience_text) : &cs_everything;
	payload_len = strlen(text);
	cs_remember(cfg, cs_message_hash(error_topic, text, (uint32_t)payload_len), audience);
	mosquitto_broker_publish_copy(NULL, error_topic, (int)payload_len, text, 0, false, NULL);
	cJSON_free(text);
	mosquitto_free(error_topic);
}

/* May `client` publish to `topic`? Only create topics, where the platform says so (cached). The account
 * may publish on account_write (the create topics' filters; the bridge judges the rest of the topic). */
static bool cs_may_publish(struct cs_config *cfg, struct cs_client *client, const char *topic, time_t now,
		char *reason, size_t reason_size)
{
	struct cs_topic_decision *decision = NULL;
	cJSON *body, *answer;
	char *why;
	bool allowed;

	if(client->scope.create_anywhere) {
		snprintf(reason, reason_size, "not a create topic");
		return cs_matches_any(&cfg->account_write, topic);
	}
	HASH_FIND_STR(client->topics, topic, decision);
	if(decision != NULL && now - decision->at < cfg->cache_seconds) {
		snprintf(reason, reason_size, "%s", decision->reason ? decision->reason : "not allowed");
		return decision->allowed;
	}
	if(client->scope.stamp == NULL || cfg->decision_url == NULL) {
		snprintf(reason, reason_size, "this client may not publish");
		return false;
	}
	body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "stamp", client->scope.stamp);
	cJSON_AddStringToObject(body, "topic", topic);
	answer = cs_ask(cfg, "publish", body);
	cJSON_Delete(body);
	if(answer == NULL) {
		snprintf(reason, reason_size, "the platform could not be asked; publish again later");
		return false; /* not cached: asked again next time */
	}
	allowed = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(answer, "allow"));
	why = cs_json_string(answer, "reason", 1024);
	snprintf(reason, reason_size, "%s", why ? why : "not allowed");
	mosquitto_free(why);
	cJSON_Delete(answer);
	if(decision == NULL) {
		if(client->topic_count >= CS_MAX_TOPIC_CACHE) {
			cs_client_forget_topics(client);
		}
		decision = mosquitto_calloc(1, sizeof(*decision));
		if(decision == NULL || (decision->topic = mosquitto_strdup(topic)) == NULL) {
			mosquitto_free(decision);
			return allowed;
		}
		HASH_ADD_KEYPTR(hh, client->topics, decision->topic, strlen(decision->topic), decision);
		client->topic_count++;
	}
	decision->allowed = allowed;
	decision->at = now;
	mosquitto_free(decision->reason);
	decision->reason = allowed ? NULL : mosquitto_strdup(reason);
	return allowed;
}

static int cs_check_read(struct cs_config *cfg, const struct mosquitto_evt_acl_check *ed,
		const struct cs_client *client)
{
	const struct cs_audience *audience;

	if(!cs_matches_any(&cfg->readable, ed->topic)) {
		return MOSQ_ERR_ACL_DENIED;
	}
	if(client->scope.anonymous && !cs_matches_any(&cfg->anonymous_read, ed->topic)) {
		return MOSQ_ERR_ACL_DENIED;
	}
	if(client->scope.read_all) {
		return MOSQ_ERR_SUCCESS;
	}
	/* Hashed for every delivery (~0.3 µs for a typical notification): a memo by address could hand a new
	 * message at a freed one's address the old one's audience. */
	audience = cs_recall(cfg, cs_message_hash(ed->topic, ed->payload, ed->payloadlen));
	if(audience == NULL) {
		/* Not a notification the plugin saw: a Will, or one queued before it remembers. Those queued for
		 * a session that returns as the same principal were checked when they were queued. */
		return client->reconnecting ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
	}
	if(cs_may_read(&client->scope, audience)) {
		return MOSQ_ERR_SUCCESS;
	}
	cfg->counters.delivery_withheld++;
	return MOSQ_ERR_ACL_DENIED;
}

/* Every publish, delivery, subscribe and unsubscribe. The user name is the authenticated one. */
static int cs_on_acl_check(int event, void *event_data, void *userdata)
{
	const struct mosquitto_evt_acl_check *ed = event_data;
	struct cs_config *cfg = userdata;
	const char *username, *client_id;
	struct cs_client *client;
	char reason[1100];

	(void)event;
	if(ed == NULL || ed->client == NULL || cfg == NULL || ed->topic == NULL) {
		return MOSQ_ERR_ACL_DENIED; /* never happens; fail closed */
	}
	username = mosquitto_client_username(ed->client);
	client_id = mosquitto_client_id(ed->client);
	if(cs_is_platform(cfg, username)) {
		return MOSQ_ERR_SUCCESS;
	}
	client = cs_client(cfg, ed->client);
	if((client == NULL || client->connection != ed->client) && cs_is_account(cfg, username)) {
		client = cs_admit_account(cfg, ed->client); /* connected: the password file let it in */
	}
	if(client == NULL || client->connection != ed->client) {
		return MOSQ_ERR_ACL_DENIED; /* a connection the plugin did not let in, or no longer its client id's */
	}
	switch(ed->access) {
		case MOSQ_ACL_SUBSCRIBE:
			if(cs_bridge_share(cfg, ed->topic)) {
				cfg->counters.subscribe_refused++;
				mosquitto_log_printf(MOSQ_LOG_WARNING,
						CS_PLUGIN ": refused subscription %s of %s (%s): the group is reserved to the platform's MQTT bridge",
						ed->topic, client_id ? client_id : "?", username ? username : "anonymous");
				return MOSQ_ERR_ACL_DENIED;
			}
			return MOSQ_ERR_SUCCESS; /* granted; each delivery is checked (MOSQ_ACL_READ) */
		case MOSQ_ACL_UNSUBSCRIBE:
			return MOSQ_ERR_SUCCESS;
		case MOSQ_ACL_READ:
			return cs_check_read(cfg, ed, client);
		case MOSQ_ACL_WRITE:
			if(ed->topic[0] == '$' || strncmp(ed->topic, cfg->ingest_prefix, cfg->ingest_prefix_len) == 0) {
				cfg->counters.publish_refused++;
				return MOSQ_ERR_ACL_DENIED;
			}
			if(cs_may_publish(cfg, client, ed->topic, time(NULL), reason, sizeof(reason))) {
				return MOSQ_ERR_SUCCESS;
			}
			cfg->counters.publish_refused++;
			mosquitto_log_printf(MOSQ_LOG_NOTICE, CS_PLUGIN ": refused publish of %s (%s) to %s: %s",
					client_id ? client_id : "?", username ? username : "anonymous", ed->topic, reason);
			cs_report_refusal(cfg, client, ed->topic, reason);
			return MOSQ_ERR_ACL_DENIED;
		default:
			return MOSQ_ERR_ACL_DENIED;
	}
}

/* -------------------------------------------------------------------------------------- messages */

static bool cs_ours(const char *name)
{
	return name != NULL && strncmp(name, CS_PREFIX_PROPERTY, sizeof(CS_PREFIX_PROPERTY) - 1) == 0;
}

/* A copy of `properties` without the user properties named citystream-* (the audience of the platform's
 * message is returned in `audience`, to be freed with free()). */
static int cs_copy_properties(const mosquitto_property *properties, mosquitto_property **out, char **audience)
{
	const mosquitto_property *p;
	int rc = MOSQ_ERR_SUCCESS;

	*out = NULL;
	for(p = properties; p != NULL && rc == MOSQ_ERR_SUCCESS; p = mosquitto_property_next(p)) {
		int id = mosquitto_property_identifier(p);
		char *name = NULL, *value = NULL;
		void *binary = NULL;
		uint16_t binary_len = 0;
		uint32_t int32 = 0;
		uint8_t byte = 0;

		switch(id) {
			case MQTT_PROP_USER_PROPERTY:
				if(mosquitto_property_read_string_pair(p, id, &name, &value, false) == NULL) {
					rc = MOSQ_ERR_NOMEM;
				}else if(!cs_ours(name)) {
					rc = mosquitto_property_add_string_pair(out, id, name, value);
				}else if(audience != NULL && strcmp(name, CS_AUDIENCE_PROPERTY) == 0 && *audience == NULL) {
					*audience = value;
					value = NULL;
				}
				break;
			case MQTT_PROP_CONTENT_TYPE:
			case MQTT_PROP_RESPONSE_TOPIC:
				if(mosquitto_property_read_string(p, id, &value, false) == NULL) {
					rc = MOSQ_ERR_NOMEM;
				}else{
					rc = mosquitto_property_add_string(out, id, value);
				}
				break;
			case MQTT_PROP_CORRELATION_DATA:
				if(mosquitto_property_read_binary(p, id, &binary, &binary_len, false) == NULL) {
					rc = MOSQ_ERR_NOMEM;
				}else{
					rc = mosquitto_property_add_binary(out, id, binary, binary_len);
				}
				break;
			case MQTT_PROP_PAYLOAD_FORMAT_INDICATOR:
				if(mosquitto_property_read_byte(p, id, &byte, false) != NULL) {
					rc = mosquitto_property_add_byte(out, id, byte);
				}
				break;
			case MQTT_PROP_MESSAGE_EXPIRY_INTERVAL:
				if(mosquitto_property_read_int32(p, id, &int32, false) != NULL) {
					rc = mosquitto_property_add_int32(out, id, int32);
				}
				break;
			default:
				break; /* topic alias, subscription identifier: the broker's own */
		}
		free(name);
		free(value);
		free(binary);
	}
	if(rc != MOSQ_ERR_SUCCESS) {
		mosquitto_property_free_all(out);
	}
	return rc;
}

/* Every PUBLISH received from a client, after its ACL check allowed it. */
static int cs_on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	struct cs_config *cfg = userdata;
	const struct cs_client *client;
	mosquitto_property *properties = NULL;
	char *audience = NULL, *topic;
	size_t topic_len;
	int rc;

	(void)event;
	if(ed == NULL || ed->client == NULL || cfg == NULL || ed->topic == NULL) {
		return MOSQ_ERR_ACL_DENIED;
	}
	if(cs_is_platform(cfg, mosquitto_client_username(ed->client))) {
		rc = cs_copy_properties(ed->properties, &properties, &audience);
		if(rc != MOSQ_ERR_SUCCESS) {
			free(audience);
			return rc;
		}
		cs_remember(cfg, cs_message_hash(ed->topic, ed->payload, ed->payloadlen), cs_audience(cfg, audience));
		free(audience);
		mosquitto_property_free_all(&ed->properties);
		ed->properties = properties;
		return MOSQ_ERR_SUCCESS;
	}
	client = cs_client(cfg, ed->client);
	if(client == NULL || client->connection != ed->client || client->scope.stamp == NULL) {
		return MOSQ_ERR_ACL_DENIED;
	}
	/* A create (the ACL check let nothing else through): to the platform only, with who sent it. */
	rc = cs_copy_properties(ed->properties, &properties, NULL);
	if(rc == MOSQ_ERR_SUCCESS) {
		rc = mosquitto_property_add_string_pair(&properties, MQTT_PROP_USER_PROPERTY, CS_PRINCIPAL_PROPERTY,
				client->scope.stamp);
	}
	if(rc == MOSQ_ERR_SUCCESS) {
		rc = mosquitto_property_add_string_pair(&properties, MQTT_PROP_USER_PROPERTY, CS_CLIENT_PROPERTY,
				client->client_id);
	}
	topic_len = strlen(ed->topic);
	topic = rc == MOSQ_ERR_SUCCESS ? mosquitto_malloc(cfg->ingest_prefix_len + topic_len + 1) : NULL;
	if(topic == NULL) {
		mosquitto_property_free_all(&properties);
		return rc != MOSQ_ERR_SUCCESS ? rc : MOSQ_ERR_NOMEM;
	}
	memcpy(topic, cfg->ingest_prefix, cfg->ingest_prefix_len);
	memcpy(topic + cfg->ingest_prefix_len, ed->topic, topic_len + 1);
	mosquitto_free(ed->topic);
	ed->topic = topic;
	mosquitto_property_free_all(&ed->properties);
	ed->properties = properties;
	ed->retain = false;
	return MOSQ_ERR_SUCCESS;
}

static int cs_on_disconnect(int event, void *event_data, void *userdata)
{
	const struct mosquitto_evt_disconnect *ed = event_data;
	struct cs_config *cfg = userdata;
	struct cs_client *client;

	(void)event;
	if(ed == NULL || ed->client == NULL || cfg == NULL) {
		return MOSQ_ERR_SUCCESS;
	}
	client = cs_client(cfg, ed->client);
	/* A persistent session keeps its entry: its queued messages are checked for it at reconnect. */
	if(client != NULL && client->connection == ed->client && mosquitto_client_clean_session(ed->client)) {
		cs_client_free(cfg, client);
	}else if(client != NULL && client->connection == ed->client) {
		client->online = false;
	}
	return MOSQ_ERR_SUCCESS;
}

/* ------------------------------------------------------------------------------- the periodic work */

static void cs_kick(struct cs_config *cfg, struct cs_client *client, const char *why)
{
	char *client_id = mosquitto_strdup(client->client_id);

	mosquitto_log_printf(MOSQ_LOG_NOTICE, CS_PLUGIN ": disconnecting client %s: %s", client->client_id, why);
	cfg->counters.kicked++;
	cs_client_free(cfg, client);
	if(client_id != NULL) {
		mosquitto_kick_client_by_clientid(client_id, false);
		mosquitto_free(client_id);
	}
}

/* Ask the platform which connected clients' credentials no longer hold; disconnect those, and clients
 * whose token has expired. */
static void cs_revalidate(struct cs_config *cfg, time_t now)
{
	struct cs_client *client, *tmp;
	struct cs_login *login, *login_tmp;
	cJSON *body, *ids, *answer, *invalid, *item;
	int asked = 0;

	body = cJSON_CreateObject();
	ids = cJSON_AddArrayToObject(body, "revocations");
	/* The cached logins too: a revoked credential must not log in again from the cache. */
	HASH_ITER(hh, cfg->logins, login, login_tmp) {
		if(login->scope.revocation != NULL && asked < 10000) {
			cJSON_AddItemToArray(ids, cJSON_CreateString(login->scope.revocation));
			asked++;
		}
	}
	HASH_ITER(hh, cfg->clients, client, tmp) {
		if(!client->online) {
			continue;
		}
		if(client->scope.expires != 0 && client->scope.expires <= now) {
			cs_kick(cfg, client, "its token has expired");
		}else if(client->scope.revocation != NULL && asked < 10000) {
			cJSON_AddItemToArray(ids, cJSON_CreateString(client->scope.revocation));
			asked++;
		}
	}
	if(asked == 0) {
		cJSON_Delete(body);
		return;
	}
	answer = cs_ask(cfg, "revalidate", body);
	cJSON_Delete(body);
	invalid = cJSON_GetObjectItemCaseSensitive(answer, "invalid");
	cJSON_ArrayForEach(item, invalid) {
		if(!cJSON_IsString(item)) {
			continue;
		}
		HASH_ITER(hh, cfg->logins, login, login_tmp) {
			if(cs_eq(login->scope.revocation, item->valuestring)) {
				cs_forget_login(cfg, login);
			}
		}
		HASH_ITER(hh, cfg->clients, client, tmp) {
			if(client->online && cs_eq(client->scope.revocation, item->valuestring)) {
				cs_kick(cfg, client, "its credentials were revoked or changed");
			}
		}
	}
	cJSON_Delete(answer);
}

static void cs_heartbeat(struct cs_config *cfg)
{
	char text[512];
	int len = snprintf(text, sizeof(text),
			"{\"plugin\":\"" CS_PLUGIN "\",\"audiences\":true,\"connect_refused\":%llu,\"subscribe_refused\":%llu,"
			"\"publish_refused\":%llu,\"delivery_withheld\":%llu,\"platform_errors\":%llu,\"disconnected\":%llu}",
			cfg->counters.connect_refused, cfg->counters.subscribe_refused, cfg->counters.publish_refused,
			cfg->counters.delivery_withheld, cfg->counters.platform_errors, cfg->counters.kicked);

	if(len > 0 && (size_t)len < sizeof(text)) {
		mosquitto_broker_publish_copy(NULL, "$SYS/broker/citystream/plugin", len, text, 0, false, NULL);
	}
}

static int cs_on_tick(int event, void *event_data, void *userdata)
{
	struct cs_config *cfg = userdata;
	struct cs_client *client, *tmp;
	time_t now = time(NULL);

	(void)event;
	(void)event_data;
	if(cfg == NULL) {
		return MOSQ_ERR_SUCCESS;
	}
	HASH_ITER(hh, cfg->clients, client, tmp) {
		client->reconnecting = false; /* its queued messages were re-checked at login, in the same turn */
	}
	if(now >= cfg->next_heartbeat) {
		cfg->next_heartbeat = now + CS_HEARTBEAT_SECONDS;
		cs_heartbeat(cfg);
	}
	if(cfg->decision_url != NULL && now >= cfg->next_revalidation) {
		cfg->next_revalidation = now + cfg->revalidate_seconds;
		cs_revalidate(cfg, now);
	}
	return MOSQ_ERR_SUCCESS;
}

/* ------------------------------------------------------------------------------------------- options */

static void cs_filters_free(struct cs_filters *filters)
{
	int i;

	for(i = 0; i < filters->count; i++) {
		mosquitto_free(filters->items[i]);
	}
	filters->count = 0;
}

static void cs_config_free(struct cs_config *cfg)
{
	struct cs_client *client, *tmp;
	struct cs_login *login, *login_tmp;
	struct cs_audience *audience, *audience_tmp;

	if(cfg == NULL) {
		return;
	}
	HASH_ITER(hh, cfg->clients, client, tmp) {
		cs_client_free(cfg, client);
	}
	HASH_ITER(hh, cfg->logins, login, login_tmp) {
		cs_forget_login(cfg, login);
	}
	HASH_ITER(hh, cfg->audiences, audience, audience_tmp) {
		HASH_DEL(cfg->audiences, audience);
		mosquitto_free(audience->text);
		mosquitto_free(audience->owner);
		mosquitto_free(audience);
	}
	if(cfg->curl != NULL) {
		curl_easy_cleanup(cfg->curl);
	}
	mosquitto_free(cfg->slots[0]);
	mosquitto_free(cfg->slots[1]);
	mosquitto_free(cfg->platform_user);
	mosquitto_free(cfg->bridge_client_id);
	mosquitto_free(cfg->bridge_group);
	mosquitto_free(cfg->ingest_prefix);
	mosquitto_free(cfg->account_user);
	mosquitto_free(cfg->decision_url);
	mosquitto_free(cfg->authorization);
	cs_filters_free(&cfg->readable);
	cs_filters_free(&cfg->anonymous_read);
	cs_filters_free(&cfg->account_write);
	mosquitto_free(cfg);
}

static const char *cs_option_value(const struct mosquitto_opt *options, int option_count, const char *key)
{
	const char *value = NULL;
	int i;

	for(i = 0; options != NULL && i < option_count; i++) {
		if(options[i].key != NULL && strcmp(options[i].key, key) == 0) {
			value = options[i].value;
		}
	}
	return value;
}

/* A copy of option `key` (the broker's option array is not ours to keep), or NULL (logged if `required`).
 * A `topic_level` value must fit in one topic level: no '/', '+' or '#'. */
static char *cs_option(const struct mosquitto_opt *options, int option_count, const char *key, bool required,
		bool topic_level, size_t *len_out)
{
	const char *value = cs_option_value(options, option_count, key);
	char *copy;
	size_t len;

	if(value == NULL || value[0] == '\0') {
		if(required) {
			mosquitto_log_printf(MOSQ_LOG_ERR, CS_PLUGIN ": missing option plugin_opt_%s", key);
		}
		return NULL;
	}
	len = strlen(value);
	if(len > CS_MAX_OPTION) {
		mosquitto_log_printf(MOSQ_LOG_ERR, CS_PLUGIN ": plugin_opt_%s is longer than %d bytes", key, CS_MAX_OPTION);
		return NULL;
	}
	if(topic_level && strpbrk(value, "/+#") != NULL) {
		mosquitto_log_printf(MOSQ_LOG_ERR, CS_PLUGIN ": plugin_opt_%s must not contain '/', '+' or '#'", key);
		return NULL;
	}
	copy = mosquitto_strdup(value);
	if(copy == NULL) {
		mosquitto_log_printf(MOSQ_LOG_ERR, CS_PLUGIN ": out of memory");
		return NULL;
	}
	if(len_out != NULL) {
		*len_out = len;
	}
	return copy;
}

static bool cs_parse_filters(const char *text, struct cs_filters *filters, const char *key)
{
	char *copy, *token, *save = NULL;

	if(text == NULL) {
		return true;
	}
	copy = mosquitto_strdup(text);
	if(copy == NULL) {
		return false;
	}
	for(token = strtok_r(copy, " ", &save); token != NULL; token = strtok_r(NULL, " ", &save)) {
		if(filters->count >= CS_MAX_FILTERS || mosquitto_sub_topic_check(token) != MOSQ_ERR_SUCCESS) {
			mosquitto_log_printf(MOSQ_LOG_ERR, CS_PLUGIN ": plugin_opt_%s: %s", key,
					filters->count >= CS_MAX_FILTERS ? "too many topic filters" : "not a topic filter");
			mosquitto_free(copy);
			return false;
		}
		filters->items[filters->count] = mosquitto_strdup(token);
		if(filters->items[filters->count] == NULL) {
			mosquitto_free(copy);
			return false;
		}
		filters->count++;
	}
	mosquitto_free(copy);
	return true;
}

static long cs_number_option(const struct mosquitto_opt *options, int option_count, const char *key, long fallback,
		long low, long high)
{
	const char *value = cs_option_value(options, option_count, key);
	char *end;
	long n;

	if(value == NULL) {
		return fallback;
	}
	n = strtol(value, &end, 10);
	if(*end != '\0' || n < low || n > high) {
		mosquitto_log_printf(MOSQ_LOG_ERR, CS_PLUGIN ": plugin_opt_%s must be a number from %ld to %ld", key, low, high);
		return -1;
	}
	return n;
}

/* "X-CityStream-Broker-Secret: <the first line of the file>". */
static char *cs_read_secret(const char *path)
{
	char line[1024], *header;
	FILE *file = fopen(path, "r");
	size_t len;

	if(file == NULL) {
		mosquitto_log_printf(MOSQ_LOG_ERR, CS_PLUGIN ": cannot read plugin_opt_decision_secret_file %s", path);
		return NULL;
	}
	if(fgets(line, sizeof(line), file) == NULL) {
		line[0] = '\0';
	}
	fclose(file);
	len = strcspn(line, "\r\n");
	line[len] = '\0';
	if(len == 0) {
		mosquitto_log_printf(MOSQ_LOG_ERR, CS_PLUGIN ": plugin_opt_decision_secret_file %s is empty", path);
		return NULL;
	}
	header = mosquitto_malloc(len + sizeof(CS_SECRET_HEADER));
	if(header != NULL) {
		snprintf(header, len + sizeof(CS_SECRET_HEADER), CS_SECRET_HEADER "%s", line);
	}
	memset(line, 0, sizeof(line));
	return header;
}

static bool cs_configure(struct cs_config *cfg, struct mosquitto_opt *options, int option_count)
{
	const char *secret_file;

	cfg->platform_user = cs_option(options, option_count, "platform_user", true, false, NULL);
	cfg->bridge_client_id = cs_option(options, option_count, "bridge_client_id", true, false, &cfg->bridge_client_id_len);
	cfg->bridge_group = cs_option(options, option_count, "bridge_group", true, true, &cfg->bridge_group_len);
	cfg->ingest_prefix = cs_option(options, option_count, "ingest_prefix", true, false, &cfg->ingest_prefix_len);
	cfg->account_user = cs_option(options, option_count, "account_user", false, false, NULL);
	cfg->decision_url = cs_option(options, option_count, "decision_url", false, false, NULL);
	if(cfg->platform_user == NULL || cfg->bridge_client_id == NULL || cfg->bridge_group == NULL
			|| cfg->ingest_prefix == NULL) {
		return false;
	}
	if(cs_option_value(options, option_count, "readable") == NULL) {
		mosquitto_log_printf(MOSQ_LOG_ERR, CS_PLUGIN ": missing option plugin_opt_readable");
		return false;
	}
	if(!cs_parse_filters(cs_option_value(options, option_count, "readable"), &cfg->readable, "readable")
			|| !cs_parse_filters(cs_option_value(options, option_count, "anonymous_read"), &cfg->anonymous_read,
				"anonymous_read")
			|| !cs_parse_filters(cs_option_value(options, option_count, "account_write"), &cfg->account_write,
				"account_write")) {
		return false;
	}
	cfg->cache_seconds = cs_number_option(options, option_count, "cache_seconds", 10, 0, 3600);
	cfg->revalidate_seconds = cs_number_option(options, option_count, "revalidate_seconds", 2, 1, 3600);
	cfg->timeout_ms = cs_number_option(options, option_count, "timeout_ms", 2000, 10, 60000);
	cfg->logins_per_second = cs_number_option(options, option_count, "logins_per_second", 50, 1, 100000);
	if(cfg->cache_seconds < 0 || cfg->revalidate_seconds < 0 || cfg->timeout_ms < 0 || cfg->logins_per_second < 0) {
		return false;
	}
	secret_file = cs_option_value(options, option_count, "decision_secret_file");
	if(cfg->decision_url != NULL) {
		if(secret_file == NULL || (cfg->authorization = cs_read_secret(secret_file)) == NULL) {
			mosquitto_log_printf(MOSQ_LOG_ERR, CS_PLUGIN ": plugin_opt_decision_url needs a readable plugin_opt_decision_secret_file");
			return false;
		}
		cfg->curl = curl_easy_init();
		if(cfg->curl == NULL) {
			return false;
		}
		curl_easy_setopt(cfg->curl, CURLOPT_TIMEOUT_MS, cfg->timeout_ms);
		curl_easy_setopt(cfg->curl, CURLOPT_CONNECTTIMEOUT_MS, cfg->timeout_ms);
		curl_easy_setopt(cfg->curl, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(cfg->curl, CURLOPT_PROTOCOLS_STR, "http,https");
		curl_easy_setopt(cfg->curl, CURLOPT_FOLLOWLOCATION, 0L);
	}
	cfg->slots[0] = mosquitto_calloc(CS_AUDIENCE_SLOTS, sizeof(struct cs_slot));
	cfg->slots[1] = mosquitto_calloc(CS_AUDIENCE_SLOTS, sizeof(struct cs_slot));
	return cfg->slots[0] != NULL && cfg->slots[1] != NULL;
}

/* ------------------------------------------------------------------------------------- plugin entry */

static const int cs_events[] = {MOSQ_EVT_BASIC_AUTH, MOSQ_EVT_ACL_CHECK, MOSQ_EVT_MESSAGE, MOSQ_EVT_DISCONNECT,
	MOSQ_EVT_TICK};
static const MOSQ_FUNC_generic_callback cs_callbacks[] = {cs_on_basic_auth, cs_on_acl_check, cs_on_message,
	cs_on_disconnect, cs_on_tick};
#define CS_EVENT_COUNT ((int)(sizeof(cs_events) / sizeof(cs_events[0])))

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;

	for(i = 0; supported_versions != NULL && i < supported_version_count; i++) {
		if(supported_versions[i] == 5) {
			return 5;
		}
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	struct cs_config *cfg;
	int i, rc = MOSQ_ERR_SUCCESS;

	if(identifier == NULL || userdata == NULL) {
		return MOSQ_ERR_INVAL;
	}
	cfg = mosquitto_calloc(1, sizeof(*cfg));
	if(cfg == NULL) {
		return MOSQ_ERR_NOMEM;
	}
	cfg->pid = identifier;
	if(!cs_configure(cfg, options, option_count)) {
		cs_config_free(cfg);
		return MOSQ_ERR_INVAL; /* the broker refuses to start: better than running unprotected */
	}
	for(i = 0; i < CS_EVENT_COUNT && rc == MOSQ_ERR_SUCCESS; i++) {
		rc = mosquitto_callback_register(identifier, cs_events[i], cs_callbacks[i], NULL, cfg);
	}
	if(rc != MOSQ_ERR_SUCCESS) {
		for(i = i - 2; i >= 0; i--) {
			mosquitto_callback_unregister(identifier, cs_events[i], cs_callbacks[i], NULL);
		}
		cs_config_free(cfg);
		return rc;
	}
	*userdata = cfg;
	mosquitto_log_printf(MOSQ_LOG_INFO,
			CS_PLUGIN ": client ids %s* and shared group %s reserved to user %s; decisions from %s",
			cfg->bridge_client_id, cfg->bridge_group, cfg->platform_user,
			cfg->decision_url ? cfg->decision_url : "nobody (accounts and anonymous clients only)");
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	struct cs_config *cfg = userdata;
	int i;

	(void)options;
	(void)option_count;
	if(cfg == NULL) {
		return MOSQ_ERR_SUCCESS;
	}
	for(i = 0; i < CS_EVENT_COUNT; i++) {
		mosquitto_callback_unregister(cfg->pid, cs_events[i], cs_callbacks[i], NULL);
	}
	cs_config_free(cfg);
	return MOSQ_ERR_SUCCESS;
}
