// An OPC UA device for the e2e tests on node-opcua: a server written independently of asyncua, with the
// address space of `ztgate sim opcua --static` that the tests use (gateway/lab/sim/opcua.py): namespace
// urn:ztgate:sim:plant, string node ids Plant, Plant.Line1, Plant.Line1.Tank1 and the tank's variables
// and methods. SecurityPolicy None, anonymous sessions, loopback only.
//
//   node device.js --port PORT --pki DIR [--without NAME ...] [--secure] [--lifetime-s S]
//
// --secure: Basic256Sha256 SignAndEncrypt only (anonymous user tokens), and client certificates trusted
// only once the "trust" command says so (unknown ones are rejected, as a device fresh from the box does).
// Prints "ready PORT" once it listens. Commands on stdin, one a line, each answered with one line:
//   set NAME VALUE     the variable's value, as a program on the device would set it  -> "ok"
//   get NAME           -> its value as JSON
//   sessions           -> how many sessions the server holds
//   subscriptions      -> how many subscriptions the server holds
//   trust FILE         a client's certificate (DER) into the trust list                       -> "ok"
// It exits when stdin closes (the test that started it is gone) or after --lifetime-s (600 s by default).
"use strict";

// stdout carries the answers to the test's commands only: node-opcua's own messages go to stderr.
const answer = process.stdout.write.bind(process.stdout);
console.log = console.info = console.warn = console.debug = console.error;
process.stdout.write = process.stderr.write.bind(process.stderr);

const fs = require("fs");
const path = require("path");
const readline = require("readline");
const {
  OPCUAServer,
  OPCUACertificateManager,
  DataType,
  StatusCodes,
  Variant,
  MessageSecurityMode,
  SecurityPolicy,
} = require("node-opcua");

const NAMESPACE_URI = "urn:ztgate:sim:plant";
const TANK = "Plant.Line1.Tank1";
// name -> [type, value at start, writable]: gateway/lab/sim/opcua.py's VARIABLES at scan 0.
const VARIABLES = {
  Level: ["Double", 50.0, false],
  Temperature: ["Double", 21.5, false],
  Pressure: ["Double", 1000.0, false],
  Flow: ["Double", 0.0, false],
  ScanCounter: ["UInt32", 0, false],
  PumpRunning: ["Boolean", false, false],
  InletOpen: ["Boolean", false, false],
  DrainOpen: ["Boolean", false, false],
  AlarmActive: ["Boolean", false, false],
  AlarmAcknowledged: ["Boolean", false, false],
  Setpoint: ["Double", 1000.0, true],
  DrainCommand: ["Boolean", false, true],
};
const SETPOINT_LOW = 0.0;
const SETPOINT_HIGH = 2500.0;

function options(argv) {
  const parsed = { port: 0, pki: "", without: new Set(), lifetimeS: 600, secure: false };
  for (let i = 2; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (flag === "--secure") {
      parsed.secure = true;
      i -= 1;
      continue;
    }
    if (value === undefined) throw new Error(`${flag}: a value is missing`);
    if (flag === "--port") parsed.port = Number(value);
    else if (flag === "--pki") parsed.pki = value;
    else if (flag === "--without") parsed.without.add(value);
    else if (flag === "--lifetime-s") parsed.lifetimeS = Number(value);
    else throw new Error(`unknown option ${flag}`);
  }
  if (!parsed.port || !parsed.pki) throw new Error("--port and --pki are required");
  return parsed;
}

async function main() {
  const opts = options(process.argv);
  const certificates = new OPCUACertificateManager({
    rootFolder: path.join(opts.pki, "server"),
    automaticallyAcceptUnknownCertificate: !opts.secure,
  });
  const users = new OPCUACertificateManager({
    rootFolder: path.join(opts.pki, "users"),
    automaticallyAcceptUnknownCertificate: true,
  });
  const server = new OPCUAServer({
    port: opts.port,
    host: "127.0.0.1",
    hostname: "127.0.0.1",
    resourcePath: "/",
    securityModes: [opts.secure ? MessageSecurityMode.SignAndEncrypt : MessageSecurityMode.None],
    securityPolicies: [opts.secure ? SecurityPolicy.Basic256Sha256 : SecurityPolicy.None],
    allowAnonymous: true,
    serverCertificateManager: certificates,
    userCertificateManager: users,
    serverCapabilities: { maxSessions: 1000 },
    maxConnectionsPerEndpoint: 1000,
    buildInfo: { productName: "ztgate test device (node-opcua)" },
  });
  await server.initialize();

  const addressSpace = server.engine.addressSpace;
  const ns = addressSpace.registerNamespace(NAMESPACE_URI);
  const plant = ns.addFolder(addressSpace.rootFolder.objects, { browseName: "Plant", nodeId: "s=Plant" });
  const line = ns.addFolder(plant, { browseName: "Line1", nodeId: "s=Plant.Line1" });
  const tank = ns.addObject({ organizedBy: line, browseName: "Tank1", nodeId: `s=${TANK}` });
  const variables = {};
  for (const [name, [type, value, writable]] of Object.entries(VARIABLES)) {
    if (opts.without.has(name)) continue;
    const access = writable ? "CurrentRead | CurrentWrite" : "CurrentRead";
    const variable = ns.addVariable({
      componentOf: tank,
      browseName: name,
      nodeId: `s=${TANK}.${name}`,
      dataType: type,
      accessLevel: access,
      userAccessLevel: access,
      value: new Variant({ dataType: DataType[type], value }),
    });
    variables[name] = variable;
  }
  if (variables.Setpoint) {
    // Writes outside the setpoint's range get BadOutOfRange, as on the asyncua device.
    const setpoint = variables.Setpoint;
    setpoint.bindVariable(
      {
        get: () => new Variant({ dataType: DataType.Double, value: setpoint.$setpoint ?? 1000.0 }),
        set: (variant) => {
          if (variant.value < SETPOINT_LOW || variant.value > SETPOINT_HIGH) return StatusCodes.BadOutOfRange;
          setpoint.$setpoint = variant.value;
          return StatusCodes.Good;
        },
      },
      true,
    );
  }
  const state = { pumpCommand: false };
  const methods = {
    Start: () => ((state.pumpCommand = true), []),
    Stop: () => ((state.pumpCommand = false), []),
    Acknowledge: () => [new Variant({ dataType: DataType.UInt32, value: 0 })],
  };
  for (const [name, run] of Object.entries(methods)) {
    if (opts.without.has(name)) continue;
    const method = ns.addMethod(tank, {
      browseName: name,
      nodeId: `s=${TANK}.${name}`,
      inputArguments: [],
      outputArguments:
        name === "Acknowledge" ? [{ name: "Acknowledged", dataType: DataType.UInt32, valueRank: -1 }] : [],
    });
    // Two parameters: node-opcua takes such a function as async (three would be a callback's).
    method.bindMethod(async (_inputArguments, _context) => ({
      statusCode: StatusCodes.Good,
      outputArguments: run(),
    }));
  }

  await server.start();
  const out = (line) => answer(`${line}\n`);
  out(`ready ${opts.port}`);

  const commands = {
    set: ([name, value]) => {
      const variable = variables[name];
      const type = VARIABLES[name][0];
      const parsed = type === "Boolean" ? value === "true" : Number(value);
      variable.setValueFromSource(new Variant({ dataType: DataType[type], value: parsed }));
      return "ok";
    },
    get: ([name]) => JSON.stringify(variables[name].readValue().value.value),
    sessions: () => String(server.currentSessionCount),
    subscriptions: () => String(server.currentSubscriptionCount),
    pump: () => JSON.stringify(state.pumpCommand),
    trust: async ([file]) => {
      await certificates.trustCertificate(fs.readFileSync(file));
      return "ok";
    },
  };
  const stop = async () => {
    await server.shutdown(0);
    process.exit(0);
  };
  setTimeout(stop, opts.lifetimeS * 1000).unref();
  const input = readline.createInterface({ input: process.stdin });
  input.on("line", (line) => {
    const [command, ...args] = line.trim().split(/\s+/);
    Promise.resolve()
      .then(() => commands[command](args))
      .then(out, (error) => out(`error ${error.message}`));
  });
  input.on("close", stop);
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
