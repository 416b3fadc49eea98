// MQTT.js clients driven by tests/clients/test_mqtt_js.py: the JavaScript MQTT library Masterportal uses,
// over WebSocket, as an external client nobody here wrote.
//
//   node mqtt_clients.mjs '<config JSON>'
//
// config: {"clients": [{"name": "...", "url": "ws://host:port/path", "protocolVersion": 4 | 5,
//           "clientId": "...", "username": "...", "password": "...",
//           "subscribe": {"topic": qos | {"qos": 0-2, "rh": 0-2, "rap": bool, "nl": bool}, ...}}]}
//   (rh, rap, nl: MQTT 5 retain handling, retain as published, no local)
// Every client connects (no reconnects), then subscribes. Commands arrive on stdin, one JSON object a line:
//   {"op": "publish", "client": NAME, "topic": T, "payload": TEXT, "qos": 0 | 1 | 2, "id": ANY}
//   {"op": "end", "client": NAME}      a clean DISCONNECT of that client
//   {"op": "quit"}                     every client ends, then the process exits (so does stdin's end)
// Events go to stdout, one JSON object a line, each with "client":
//   connect {reasonCode, sessionPresent} | subscribe {granted: [[topic, qos], ...]} |
//   message {topic, payload (UTF-8), qos, retain, userProperties} | published {id, reasonCode} |
//   error {message, code} | close
import mqtt from "mqtt";
import readline from "node:readline";

const config = JSON.parse(process.argv[2]);
const clients = new Map();

function emit(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

for (const spec of config.clients) {
  const name = spec.name;
  const client = mqtt.connect(spec.url, {
    protocolVersion: spec.protocolVersion,
    clientId: spec.clientId,
    username: spec.username ?? undefined,
    password: spec.password ?? undefined,
    clean: true,
    reconnectPeriod: 0,
    connectTimeout: 15000,
    keepalive: 30,
  });
  clients.set(name, client);
  client.on("connect", (connack) => {
    emit({ event: "connect", client: name, reasonCode: connack.reasonCode ?? connack.returnCode ?? 0,
           sessionPresent: connack.sessionPresent });
    const topics = spec.subscribe ?? {};
    if (Object.keys(topics).length === 0) return;
    const wanted = Object.fromEntries(Object.entries(topics).map(
      ([topic, options]) => [topic, typeof options === "number" ? { qos: options } : options]));
    client.subscribe(wanted, (err, granted) => {
      if (err) emit({ event: "error", client: name, message: String(err.message ?? err), code: err.code ?? null });
      else emit({ event: "subscribe", client: name, granted: granted.map((g) => [g.topic, g.qos]) });
    });
  });
  client.on("message", (topic, payload, packet) => {
    emit({ event: "message", client: name, topic, payload: payload.toString("utf8"), qos: packet.qos,
           retain: packet.retain, userProperties: packet.properties?.userProperties ?? null });
  });
  client.on("error", (err) => emit({ event: "error", client: name, message: String(err.message ?? err),
                                     code: err.code ?? null }));
  client.on("close", () => emit({ event: "close", client: name }));
}

function quit() {
  let open = clients.size;
  if (open === 0) process.exit(0);
  for (const client of clients.values()) {
    client.end(false, {}, () => {
      open -= 1;
      if (open === 0) setTimeout(() => process.exit(0), 50);
    });
  }
  setTimeout(() => process.exit(0), 5000).unref();
}

const commands = readline.createInterface({ input: process.stdin });
commands.on("line", (line) => {
  if (!line.trim()) return;
  const command = JSON.parse(line);
  const client = clients.get(command.client);
  if (command.op === "quit") quit();
  else if (command.op === "end") client.end(false, {}, () => {});
  else if (command.op === "publish") {
    client.publish(command.topic, command.payload, { qos: command.qos }, (err, packet) => {
      emit({ event: "published", client: command.client, id: command.id ?? null,
             reasonCode: err ? (err.code ?? -1) : (packet?.reasonCode ?? 0),
             message: err ? String(err.message ?? err) : null });
    });
  }
});
commands.on("close", quit);
