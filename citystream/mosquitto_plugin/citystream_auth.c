/*
 * citystream_auth: CityStream's Mosquitto plugin (Mosquitto >= 2.0, plugin API version 5).
 *
 * Why it exists. The MQTT bridge takes the sensors' Observations through the MQTT 5 shared subscription
 * `$share/<group>/v1.1/...` (group "citystream") on a persistent session with a fixed client id
 * ("citystream-bridge", workers "citystream-bridge-w1"...). Mosquitto's password file and ACL file cannot
 * protect either:
 *   - the ACL file never checks subscriptions (Mosquitto 2.0.11, src/security_default.c: "FIXME -
 *     implement ACL subscription strings"), so any client allowed to read v1.1/# could join the bridge's
 *     group, and the broker would hand it part of the stream: those Observations would never be stored,
 *     although the sensor was told they were delivered;
 *   - client ids are no ACL matter at all, so any client could connect with the bridge's id, take over its
 *     persistent session (the bridge is disconnected) and receive the messages queued for it.
 * This plugin reserves both to the platform account and leaves everything else to the password file and
 * the ACL file.
 *
 * How. Mosquitto asks the v5 plugin callbacks of an event in the order they were registered, until one
 * answers something else than MOSQ_ERR_PLUGIN_DEFER (src/security.c: mosquitto_unpwd_check,
 * mosquitto_acl_check). A `plugin` is loaded and registers its callbacks (mosquitto_security_module_init)
 * before the broker registers its own password-file and ACL-file callbacks (mosquitto_security_init ->
 * mosquitto_security_init_default), so these callbacks see every CONNECT and every SUBSCRIBE first. They
 * answer MOSQ_ERR_AUTH (CONNACK "not authorised"; the connected bridge is untouched, as the session
 * take-over happens only after authentication) or MOSQ_ERR_ACL_DENIED (SUBACK failure: 0x87 in MQTT 5, 0x80
 * in MQTT 3.1.1) for a violation, and MOSQ_ERR_PLUGIN_DEFER otherwise, never MOSQ_ERR_SUCCESS: the password
 * file still checks every password (including the platform's) and the ACL file every publish and delivery.
 *
 * Options (`plugin_opt_<name> <value>` lines after the `plugin` line; all required):
 *   platform_user     the account that may use the two reserved things ("citystream")
 *   bridge_client_id  reserved client id prefix: the bridge's id and everything starting with it
 *   bridge_group      the reserved shared subscription group: `$share/<bridge_group>/<any filter>`
 *
 * Build (Debian packages gcc, libc6-dev, mosquitto-dev, libmosquitto-dev; the broker itself provides the
 * mosquitto_* functions at load time, so nothing is linked):
 *   cc -shared -fPIC -O2 -Wall -Wextra -o citystream_auth.so citystream_auth.c
 * citystream/embedded.py builds it on first use for `citystream up` and the tests; deploy/mosquitto/Dockerfile
 * builds it for docker-compose. Keep it warning-free (tests/mqtt/test_broker_security.py compiles with -Werror).
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define CS_PLUGIN "citystream_auth"
#define CS_MAX_OPTION 1024 /* longest option value accepted; real ones are a few dozen bytes */
#define CS_SHARE_PREFIX "$share/"

struct cs_config {
	mosquitto_plugin_id_t *pid;
	char *platform_user;
	char *bridge_client_id;
	size_t bridge_client_id_len;
	char *bridge_group;
	size_t bridge_group_len;
};

/* ------------------------------------------------------------------------------------------- rules */

static bool cs_is_platform(const struct cs_config *cfg, const char *username)
{
	return username != NULL && strcmp(username, cfg->platform_user) == 0;
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

/* ----------------------------------------------------------------------------------------- callbacks */

/* Every CONNECT without MQTT 5 extended authentication, before the password file. The user name is the one
 * the client claims: deferring lets the password file verify it. */
static int cs_on_basic_auth(int event, void *event_data, void *userdata)
{
	const struct mosquitto_evt_basic_auth *ed = event_data;
	const struct cs_config *cfg = userdata;
	const char *client_id;

	(void)event;
	if(ed == NULL || ed->client == NULL || cfg == NULL) {
		return MOSQ_ERR_AUTH; /* never happens; fail closed */
	}
	client_id = mosquitto_client_id(ed->client);
	if(cs_reserved_client_id(cfg, client_id) && !cs_is_platform(cfg, ed->username)) {
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				CS_PLUGIN ": refused client id %s to %s: it is reserved to the platform's MQTT bridge",
				client_id, ed->username ? ed->username : "an anonymous client");
		return MOSQ_ERR_AUTH;
	}
	return MOSQ_ERR_PLUGIN_DEFER;
}

/* Every publish, delivery, subscribe and unsubscribe, before the ACL file: only SUBSCRIBE is judged here,
 * and cheaply, as deliveries pass through too. The user name is the authenticated one. */
static int cs_on_acl_check(int event, void *event_data, void *userdata)
{
	const struct mosquitto_evt_acl_check *ed = event_data;
	const struct cs_config *cfg = userdata;
	const char *username;

	(void)event;
	if(ed == NULL || ed->client == NULL || cfg == NULL) {
		return MOSQ_ERR_ACL_DENIED; /* never happens; fail closed */
	}
	if(ed->access != MOSQ_ACL_SUBSCRIBE || !cs_bridge_share(cfg, ed->topic)) {
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	username = mosquitto_client_username(ed->client);
	if(!cs_is_platform(cfg, username)) {
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				CS_PLUGIN ": refused subscription %s of %s (%s): the group is reserved to the platform's MQTT bridge",
				ed->topic, mosquitto_client_id(ed->client) ? mosquitto_client_id(ed->client) : "?",
				username ? username : "anonymous");
		return MOSQ_ERR_ACL_DENIED;
	}
	return MOSQ_ERR_PLUGIN_DEFER;
}

/* ------------------------------------------------------------------------------------------- options */

static void cs_config_free(struct cs_config *cfg)
{
	if(cfg == NULL) {
		return;
	}
	free(cfg->platform_user);
	free(cfg->bridge_client_id);
	free(cfg->bridge_group);
	free(cfg);
}

/* A copy of option `key` (the broker's option array is not ours to keep), or NULL with the reason logged.
 * A `topic_level` value must fit in one topic level: no '/', '+' or '#'. */
static char *cs_option(const struct mosquitto_opt *options, int option_count, const char *key, bool topic_level,
		size_t *len_out)
{
	const char *value = NULL;
	char *copy;
	size_t len;
	int i;

	for(i = 0; options != NULL && i < option_count; i++) {
		if(options[i].key != NULL && strcmp(options[i].key, key) == 0) {
			value = options[i].value;
		}
	}
	if(value == NULL || value[0] == '\0') {
		mosquitto_log_printf(MOSQ_LOG_ERR, CS_PLUGIN ": missing option plugin_opt_%s", key);
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
	copy = malloc(len + 1);
	if(copy == NULL) {
		mosquitto_log_printf(MOSQ_LOG_ERR, CS_PLUGIN ": out of memory");
		return NULL;
	}
	memcpy(copy, value, len + 1);
	if(len_out != NULL) {
		*len_out = len;
	}
	return copy;
}

/* ------------------------------------------------------------------------------------- plugin entry */

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
	int rc;

	if(identifier == NULL || userdata == NULL) {
		return MOSQ_ERR_INVAL;
	}
	cfg = calloc(1, sizeof(*cfg));
	if(cfg == NULL) {
		return MOSQ_ERR_NOMEM;
	}
	cfg->pid = identifier;
	cfg->platform_user = cs_option(options, option_count, "platform_user", false, NULL);
	cfg->bridge_client_id = cs_option(options, option_count, "bridge_client_id", false,
			&cfg->bridge_client_id_len);
	cfg->bridge_group = cs_option(options, option_count, "bridge_group", true, &cfg->bridge_group_len);
	if(cfg->platform_user == NULL || cfg->bridge_client_id == NULL || cfg->bridge_group == NULL) {
		cs_config_free(cfg);
		return MOSQ_ERR_INVAL; /* the broker refuses to start: better than running unprotected */
	}

	rc = mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, cs_on_basic_auth, NULL, cfg);
	if(rc == MOSQ_ERR_SUCCESS) {
		rc = mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, cs_on_acl_check, NULL, cfg);
		if(rc != MOSQ_ERR_SUCCESS) {
			mosquitto_callback_unregister(identifier, MOSQ_EVT_BASIC_AUTH, cs_on_basic_auth, NULL);
		}
	}
	if(rc != MOSQ_ERR_SUCCESS) {
		cs_config_free(cfg);
		return rc;
	}
	*userdata = cfg;
	mosquitto_log_printf(MOSQ_LOG_INFO,
			CS_PLUGIN ": client ids %s* and shared group %s reserved to user %s",
			cfg->bridge_client_id, cfg->bridge_group, cfg->platform_user);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	struct cs_config *cfg = userdata;

	(void)options;
	(void)option_count;
	if(cfg == NULL) {
		return MOSQ_ERR_SUCCESS;
	}
	mosquitto_callback_unregister(cfg->pid, MOSQ_EVT_BASIC_AUTH, cs_on_basic_auth, NULL);
	mosquitto_callback_unregister(cfg->pid, MOSQ_EVT_ACL_CHECK, cs_on_acl_check, NULL);
	cs_config_free(cfg);
	return MOSQ_ERR_SUCCESS;
}
