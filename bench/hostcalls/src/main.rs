//! `hostcalls`: what one request costs a proxy-wasm module, counted rather than timed.
//!
//! Drives the module through Envoy's callback sequence for a plugin and for each request
//! (context create, request headers, response headers, response body, log, done, delete) in the
//! wasmi interpreter, against the recording host in [`host`], and prints JSON: host calls per
//! request by name, shared-data reads and writes, bytes copied across the boundary, guest
//! allocations made to hand values over, and wasm instructions executed per callback (wasmi
//! fuel: one unit per instruction, a machine-independent measure of the work done in wasm).
//!
//! With `--grant-leases` (a configuration with a fleet limit) the plugin ticks once after its
//! configuration and every gRPC call it makes is answered, as a rate limit service would, with a
//! grant: the requests then run with the limit in fleet mode, as in production.
//!
//! usage: hostcalls MODULE.wasm [--config FILE] [--root-id ID] [--requests N]
//!        [--header NAME:VALUE]... [--path PATH] [--grant-leases]

mod host;

use host::Host;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use wasmi::{Config, Engine, Func, Instance, Linker, Module, Store, Val};

struct Args {
    module: String,
    config: Option<String>,
    root_id: String,
    requests: u64,
    headers: Vec<(String, String)>,
    path: String,
    grant_leases: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        module: String::new(),
        config: None,
        root_id: "surgeguard".into(),
        requests: 1000,
        headers: Vec::new(),
        path: "/api/products/42".into(),
        grant_leases: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{x} needs a value"));
        match x.as_str() {
            "--config" => a.config = Some(value()?),
            "--root-id" => a.root_id = value()?,
            "--requests" => {
                a.requests = value()?
                    .parse()
                    .map_err(|_| "--requests: a whole number".to_string())?
            }
            "--header" => {
                let v = value()?;
                let (k, val) = v
                    .split_once(':')
                    .ok_or_else(|| format!("--header: NAME:VALUE, got {v}"))?;
                a.headers
                    .push((k.trim().to_ascii_lowercase(), val.trim().to_string()));
            }
            "--path" => a.path = value()?,
            "--grant-leases" => a.grant_leases = true,
            _ if a.module.is_empty() && !x.starts_with('-') => a.module = x.clone(),
            _ => return Err(format!("unknown argument {x}")),
        }
    }
    if a.module.is_empty() {
        return Err("usage: hostcalls MODULE.wasm [--config FILE] [--root-id ID] [--requests N] [--header NAME:VALUE]... [--path PATH] [--grant-leases]".into());
    }
    Ok(a)
}

/// The module instantiated against the recording host.
struct Vm {
    store: Store<Host>,
    instance: Instance,
}

impl Vm {
    fn new(wasm: &[u8], host: Host) -> Result<Vm, String> {
        let mut config = Config::default();
        config.consume_fuel(true);
        let engine = Engine::new(&config);
        let module = Module::new(&engine, wasm).map_err(|e| format!("module: {e}"))?;
        let mut linker: Linker<Host> = Linker::new(&engine);
        for import in module.imports() {
            let Some(ty) = import.ty().func() else {
                continue;
            };
            let name = import.name().to_string();
            linker
                .func_new(
                    import.module(),
                    import.name(),
                    ty.clone(),
                    move |caller, p, r| host::call(&name, caller, p, r),
                )
                .map_err(|e| format!("link {}: {e}", import.name()))?;
        }
        let mut store = Store::new(&engine, host);
        store
            .set_fuel(u64::MAX / 4)
            .map_err(|e| format!("fuel: {e}"))?;
        let instance = linker
            .instantiate_and_start(&mut store, &module)
            .map_err(|e| format!("instantiate: {e}"))?;
        let mut vm = Vm { store, instance };
        if vm.func("_initialize").is_some() {
            vm.call("_initialize", &[])?;
        }
        Ok(vm)
    }

    fn func(&self, name: &str) -> Option<Func> {
        self.instance.get_func(&self.store, name)
    }

    /// Calls an export with i32 arguments; returns its i32 result (if any) and the wasm
    /// instructions it executed.
    fn call(&mut self, name: &str, args: &[i32]) -> Result<(Option<i32>, u64), String> {
        let f = self
            .func(name)
            .ok_or_else(|| format!("the module does not export {name}"))?;
        let n_results = f.ty(&self.store).results().len();
        let params: Vec<Val> = args.iter().map(|a| Val::I32(*a)).collect();
        let mut results = vec![Val::I32(0); n_results];
        let before = self.store.get_fuel().unwrap_or(0);
        f.call(&mut self.store, &params, &mut results)
            .map_err(|e| format!("{name}: {e}; module log: {:?}", self.store.data().logs))?;
        let used = before.saturating_sub(self.store.get_fuel().unwrap_or(0));
        Ok((results.first().and_then(Val::i32), used))
    }
}

/// The callbacks Envoy makes for one GET answered with a small body, in order. Like Envoy, the
/// profiler skips a callback the module does not export.
const REQUEST_CALLBACKS: [&str; 7] = [
    "proxy_on_context_create",
    "proxy_on_request_headers",
    "proxy_on_response_headers",
    "proxy_on_response_body",
    "proxy_on_log",
    "proxy_on_done",
    "proxy_on_delete",
];

/// One request's cost: instructions per callback and host calls by name.
#[derive(Default)]
struct Cost {
    instructions: BTreeMap<&'static str, u64>,
    callbacks_into_module: u64,
    host_calls: BTreeMap<String, u64>,
    bytes_to_module: u64,
    bytes_from_module: u64,
    host_allocations: u64,
    local_replies: u64,
}

fn one_request(vm: &mut Vm, context_id: i32, root_id: i32, n_headers: i32) -> Result<Cost, String> {
    let mut cost = Cost::default();
    let h = vm.store.data_mut();
    let (to0, from0, alloc0, replies0) = (
        h.bytes_to_module,
        h.bytes_from_module,
        h.host_allocations,
        h.local_replies,
    );
    h.take_counts();
    for cb in REQUEST_CALLBACKS {
        if vm.func(cb).is_none() {
            continue;
        }
        let args: Vec<i32> = match cb {
            "proxy_on_context_create" => vec![context_id, root_id],
            "proxy_on_request_headers" => vec![context_id, n_headers, 1],
            "proxy_on_response_headers" => vec![context_id, 3, 0],
            "proxy_on_response_body" => vec![context_id, 3, 1],
            _ => vec![context_id],
        };
        let (_, used) = vm.call(cb, &args)?;
        cost.instructions.insert(cb, used);
        cost.callbacks_into_module += 1;
    }
    let h = vm.store.data_mut();
    cost.host_calls = h.take_counts();
    cost.bytes_to_module = h.bytes_to_module - to0;
    cost.bytes_from_module = h.bytes_from_module - from0;
    cost.host_allocations = h.host_allocations - alloc0;
    cost.local_replies = h.local_replies - replies0;
    Ok(cost)
}

fn cost_json(costs: &[Cost]) -> Value {
    let n = costs.len().max(1) as f64;
    let avg = |f: &dyn Fn(&Cost) -> u64| costs.iter().map(f).sum::<u64>() as f64 / n;
    let mut host_calls: BTreeMap<String, f64> = BTreeMap::new();
    for c in costs {
        for (k, v) in &c.host_calls {
            *host_calls.entry(k.clone()).or_default() += *v as f64 / n;
        }
    }
    let mut instructions = Map::new();
    let made = |cb: &str| costs.iter().any(|c| c.instructions.contains_key(cb));
    for cb in REQUEST_CALLBACKS.into_iter().filter(|cb| made(cb)) {
        instructions.insert(
            cb.into(),
            json!(avg(&|c: &Cost| c.instructions.get(cb).copied().unwrap_or(0)).round()),
        );
    }
    let total_instr = avg(&|c: &Cost| c.instructions.values().sum());
    let shared_reads = host_calls
        .get("proxy_get_shared_data")
        .copied()
        .unwrap_or(0.0);
    let shared_writes = host_calls
        .get("proxy_set_shared_data")
        .copied()
        .unwrap_or(0.0);
    json!({
        "callbacks_into_module": round2(avg(&|c: &Cost| c.callbacks_into_module)),
        "host_calls_total": round2(host_calls.values().sum()),
        "host_calls": host_calls.into_iter().map(|(k, v)| (k, json!(round2(v)))).collect::<Map<_, _>>(),
        "shared_data_reads": round2(shared_reads),
        "shared_data_writes": round2(shared_writes),
        "bytes_to_module": round2(avg(&|c: &Cost| c.bytes_to_module)),
        "bytes_from_module": round2(avg(&|c: &Cost| c.bytes_from_module)),
        "host_allocations": round2(avg(&|c: &Cost| c.host_allocations)),
        "local_replies": round2(avg(&|c: &Cost| c.local_replies)),
        "wasm_instructions_total": total_instr.round(),
        "wasm_instructions": instructions,
    })
}

/// What a rate limit service tells a lease call it grants (`envoy.service.ratelimit.v3`
/// `RateLimitResponse`, protobuf): overall OK, one descriptor OK with `remaining` left and a
/// window that resets in a second.
fn grant_message(remaining: u64) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
        varint(out, field << 3 | 2);
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    let duration = [0x08, 0x01]; // seconds: 1
    let mut status = vec![0x08, 0x01]; // code: OK
    varint(&mut status, 3 << 3);
    varint(&mut status, remaining);
    field_bytes(&mut status, 4, &duration);
    let mut response = vec![0x08, 0x01]; // overall_code: OK
    field_bytes(&mut response, 2, &status);
    response
}

/// Fleet tokens left after a grant: far more than any reserve asks for.
const GRANT_REMAINING: u64 = 1_000_000_000;

/// Answers every gRPC call the module has made with a grant; returns the calls answered and the
/// wasm instructions the answers took.
fn grant_pending_calls(vm: &mut Vm, root_id: i32) -> Result<(Vec<Value>, u64), String> {
    let pending = std::mem::take(&mut vm.store.data_mut().grpc_pending);
    let mut answered = Vec::new();
    let mut instructions = 0;
    for call in pending {
        let message = grant_message(GRANT_REMAINING);
        let size = message.len() as i32;
        vm.store.data_mut().grpc_receive = message;
        let (_, used) = vm.call("proxy_on_grpc_receive", &[root_id, call.token as i32, size])?;
        instructions += used;
        answered.push(
            json!({"cluster": call.cluster, "service": call.service, "method": call.method,
            "request_bytes": call.message.len(), "timeout_ms": call.timeout_ms}),
        );
    }
    Ok((answered, instructions))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn run(a: &Args) -> Result<Value, String> {
    let wasm = std::fs::read(&a.module).map_err(|e| format!("{}: {e}", a.module))?;
    let config = match &a.config {
        Some(path) => std::fs::read(path).map_err(|e| format!("{path}: {e}"))?,
        None => Vec::new(),
    };
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        (":method".into(), b"GET".to_vec()),
        (":path".into(), a.path.as_bytes().to_vec()),
        (":authority".into(), b"127.0.0.1".to_vec()),
        (":scheme".into(), b"http".to_vec()),
    ];
    headers.extend(
        a.headers
            .iter()
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec())),
    );
    let n_headers = headers.len() as i32;
    let host = Host {
        config: config.clone(),
        request_headers: headers,
        properties: [
            ("source.address", "127.0.0.1:40000"),
            ("plugin_name", a.root_id.as_str()),
            ("plugin_root_id", a.root_id.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        // Envoy's `response.code` at the stream's end: a u64, little-endian (read by an
        // adaptive in-flight limit, which takes its latency and error samples there).
        .chain([("response.code".to_string(), 200u64.to_le_bytes().to_vec())])
        .collect(),
        now_ns: 1_700_000_000_000_000_000,
        ..Host::default()
    };
    let mut vm = Vm::new(&wasm, host)?;
    let root_id = 1;
    vm.store.data_mut().take_counts();
    let (_, i_create) = vm.call("proxy_on_context_create", &[root_id, 0])?;
    let (started, i_start) = vm.call("proxy_on_vm_start", &[root_id, 0])?;
    let (configured, i_configure) =
        vm.call("proxy_on_configure", &[root_id, config.len() as i32])?;
    if started != Some(1) || configured != Some(1) {
        return Err(format!(
            "the module refused to start or configure: {:?}",
            vm.store.data().logs
        ));
    }
    let configure_calls = vm.store.data_mut().take_counts();

    // A fleet limit starts in local mode; its first tick asks for a lease, which is granted.
    let leases = if a.grant_leases {
        vm.store.data_mut().now_ns += 20_000_000;
        let (_, i_tick) = vm.call("proxy_on_tick", &[root_id])?;
        let (calls, i_answers) = grant_pending_calls(&mut vm, root_id)?;
        json!({"calls_granted": calls, "host_calls": vm.store.data_mut().take_counts(),
            "wasm_instructions": i_tick + i_answers})
    } else {
        Value::Null
    };

    // The first request creates the shared state; later ones find it (the steady state).
    let first = one_request(&mut vm, 2, root_id, n_headers)?;
    let mut steady = Vec::new();
    for i in 0..a.requests {
        vm.store.data_mut().now_ns += 50_000;
        steady.push(one_request(&mut vm, 3 + i as i32, root_id, n_headers)?);
    }
    // The root's periodic tick (every second in surgeguard): its cost is per second, not per
    // request; shown apart.
    vm.store.data_mut().take_counts();
    let tick = if vm.func("proxy_on_tick").is_some() {
        let (_, used) = vm.call("proxy_on_tick", &[root_id])?;
        json!({"host_calls": vm.store.data_mut().take_counts(), "wasm_instructions": used})
    } else {
        Value::Null
    };
    let h = vm.store.data();
    Ok(json!({
        "per_tick": tick,
        "module": a.module,
        "module_bytes": wasm.len(),
        "requests": a.requests,
        "request": {"path": a.path, "headers": a.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>()},
        "per_request": cost_json(&steady),
        "first_request": cost_json(std::slice::from_ref(&first)),
        "configure": {
            "host_calls": configure_calls,
            "wasm_instructions": i_create + i_start + i_configure,
            "metrics_defined": h.metric_names().len(),
        },
        "leases_at_start": leases,
        "grpc_calls_unanswered": h.grpc_pending.len(),
        "metrics_after": h.metric_values(),
        "shared_keys_after": h.shared_keys(),
        "module_log": h.logs,
    }))
}

fn main() {
    match parse_args().and_then(|a| run(&a)) {
        Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
        Err(e) => {
            eprintln!("hostcalls: {e}");
            std::process::exit(1);
        }
    }
}
