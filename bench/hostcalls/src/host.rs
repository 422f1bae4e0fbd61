//! A fake proxy-wasm host that records every call a module makes, behaving like Envoy for the
//! calls the filters use: request headers, properties, the clock, shared data with CAS
//! versions, metrics (and their values), gRPC calls (recorded with a token; the driver answers
//! them), local replies, logs. Everything else answers `Ok` and is counted.
//!
//! Status codes are proxy-wasm's: 0 Ok, 1 NotFound, 2 BadArgument, 8 CasMismatch.

use std::collections::{BTreeMap, HashMap};
use wasmi::{Caller, Error, Extern, Val};

const OK: i32 = 0;
const NOT_FOUND: i32 = 1;
const BAD_ARGUMENT: i32 = 2;
const CAS_MISMATCH: i32 = 8;
const PLUGIN_CONFIGURATION: i32 = 7;
const REQUEST_HEADERS: i32 = 0;
const GRPC_RECEIVE_BUFFER: i32 = 5;

/// A gRPC call the module made and nobody has answered yet.
#[derive(Debug, Clone)]
pub struct GrpcCall {
    pub token: u32,
    pub cluster: String,
    pub service: String,
    pub method: String,
    pub message: Vec<u8>,
    pub timeout_ms: u32,
}

/// What the module sees of the world, and what it did to it.
#[derive(Default)]
pub struct Host {
    pub config: Vec<u8>,
    pub request_headers: Vec<(String, Vec<u8>)>,
    pub properties: HashMap<String, Vec<u8>>,
    pub now_ns: u64,
    pub(crate) shared: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    pub(crate) next_cas: u32,
    pub(crate) metrics: Vec<String>,
    /// Metric values by id (ids are 1-based indices into `metrics`).
    pub(crate) metric_values: HashMap<u32, i64>,
    /// gRPC calls made and not yet answered or cancelled.
    pub grpc_pending: Vec<GrpcCall>,
    pub(crate) next_grpc_token: u32,
    /// The message handed to `proxy_on_grpc_receive` (`GrpcReceiveBuffer`).
    pub grpc_receive: Vec<u8>,
    /// Host calls by import name, since the last [`Host::take_counts`].
    pub counts: BTreeMap<String, u64>,
    /// Bytes copied host -> module (values handed out) and module -> host (values written).
    pub bytes_to_module: u64,
    pub bytes_from_module: u64,
    /// Guest allocations the host requested to hand values over (`proxy_on_memory_allocate`).
    pub host_allocations: u64,
    pub logs: Vec<String>,
    pub local_replies: u64,
}

impl Host {
    pub fn take_counts(&mut self) -> BTreeMap<String, u64> {
        std::mem::take(&mut self.counts)
    }

    pub fn shared_keys(&self) -> usize {
        self.shared.len()
    }

    pub fn metric_names(&self) -> &[String] {
        &self.metrics
    }

    /// Every metric with a value, by name.
    pub fn metric_values(&self) -> BTreeMap<String, i64> {
        self.metric_values
            .iter()
            .filter_map(|(id, v)| {
                Some((
                    self.metrics.get((*id as usize).checked_sub(1)?)?.clone(),
                    *v,
                ))
            })
            .collect()
    }
}

fn memory(caller: &Caller<'_, Host>) -> Result<wasmi::Memory, Error> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(Error::new("module exports no memory")),
    }
}

fn arg(p: &[Val], i: usize) -> Result<i32, Error> {
    p.get(i)
        .and_then(Val::i32)
        .ok_or_else(|| Error::new(format!("argument {i} is not an i32")))
}

fn arg64(p: &[Val], i: usize) -> Result<i64, Error> {
    p.get(i)
        .and_then(Val::i64)
        .ok_or_else(|| Error::new(format!("argument {i} is not an i64")))
}

fn text(caller: &Caller<'_, Host>, ptr: i32, len: i32) -> Result<String, Error> {
    Ok(String::from_utf8_lossy(&read(caller, ptr, len)?).into_owned())
}

fn read(caller: &Caller<'_, Host>, ptr: i32, len: i32) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; len.max(0) as usize];
    memory(caller)?
        .read(caller, ptr as u32 as usize, &mut buf)
        .map_err(|e| Error::new(format!("read: {e}")))?;
    Ok(buf)
}

fn write(caller: &mut Caller<'_, Host>, ptr: i32, bytes: &[u8]) -> Result<(), Error> {
    let m = memory(caller)?;
    m.write(&mut *caller, ptr as u32 as usize, bytes)
        .map_err(|e| Error::new(format!("write: {e}")))
}

/// Hands `value` to the module the way Envoy does: allocate in the guest with its
/// `proxy_on_memory_allocate`, copy, and write the pointer and length to the out-params.
fn give(
    caller: &mut Caller<'_, Host>,
    value: &[u8],
    out_ptr: i32,
    out_len: i32,
) -> Result<(), Error> {
    let alloc = match caller.get_export("proxy_on_memory_allocate") {
        Some(Extern::Func(f)) => f,
        _ => return Err(Error::new("module exports no proxy_on_memory_allocate")),
    };
    let mut ret = [Val::I32(0)];
    alloc.call(&mut *caller, &[Val::I32(value.len() as i32)], &mut ret)?;
    let ptr = ret[0].i32().unwrap_or(0);
    write(caller, ptr, value)?;
    write(caller, out_ptr, &ptr.to_le_bytes())?;
    write(caller, out_len, &(value.len() as i32).to_le_bytes())?;
    let h = caller.data_mut();
    h.host_allocations += 1;
    h.bytes_to_module += value.len() as u64;
    Ok(())
}

/// One host call: counts it, then does what Envoy would.
pub fn call(
    name: &str,
    mut caller: Caller<'_, Host>,
    p: &[Val],
    r: &mut [Val],
) -> Result<(), Error> {
    *caller
        .data_mut()
        .counts
        .entry(name.to_string())
        .or_default() += 1;
    let status = match name {
        "proxy_log" => {
            let msg = read(&caller, arg(p, 1)?, arg(p, 2)?)?;
            caller
                .data_mut()
                .logs
                .push(String::from_utf8_lossy(&msg).into_owned());
            OK
        }
        "proxy_get_current_time_nanoseconds" => {
            let now = caller.data().now_ns;
            write(&mut caller, arg(p, 0)?, &now.to_le_bytes())?;
            OK
        }
        "proxy_get_buffer_bytes" => {
            let buffer = match arg(p, 0)? {
                PLUGIN_CONFIGURATION => Some(caller.data().config.clone()),
                GRPC_RECEIVE_BUFFER => Some(caller.data().grpc_receive.clone()),
                _ => None,
            };
            match buffer {
                Some(b) => {
                    // (type, start, max_size, out_ptr, out_len): the slice asked for.
                    let start = (arg(p, 1)?.max(0) as usize).min(b.len());
                    let end = start
                        .saturating_add(arg(p, 2)? as u32 as usize)
                        .min(b.len());
                    give(&mut caller, &b[start..end], arg(p, 3)?, arg(p, 4)?)?;
                    OK
                }
                None => NOT_FOUND,
            }
        }
        "proxy_grpc_call" => {
            // (cluster, service, method, initial metadata, message: each ptr + len; timeout_ms;
            // token out-param)
            let call = GrpcCall {
                token: 0,
                cluster: text(&caller, arg(p, 0)?, arg(p, 1)?)?,
                service: text(&caller, arg(p, 2)?, arg(p, 3)?)?,
                method: text(&caller, arg(p, 4)?, arg(p, 5)?)?,
                message: read(&caller, arg(p, 8)?, arg(p, 9)?)?,
                timeout_ms: arg(p, 10)? as u32,
            };
            if call.cluster.is_empty() {
                BAD_ARGUMENT
            } else {
                let h = caller.data_mut();
                h.bytes_from_module += call.message.len() as u64;
                h.next_grpc_token += 1;
                let token = h.next_grpc_token;
                h.grpc_pending.push(GrpcCall { token, ..call });
                write(&mut caller, arg(p, 11)?, &token.to_le_bytes())?;
                OK
            }
        }
        "proxy_grpc_cancel" => {
            let token = arg(p, 0)? as u32;
            let h = caller.data_mut();
            let before = h.grpc_pending.len();
            h.grpc_pending.retain(|c| c.token != token);
            if h.grpc_pending.len() < before {
                OK
            } else {
                NOT_FOUND
            }
        }
        "proxy_record_metric" => {
            let (id, value) = (arg(p, 0)? as u32, arg64(p, 1)?);
            caller.data_mut().metric_values.insert(id, value);
            OK
        }
        "proxy_increment_metric" => {
            let (id, offset) = (arg(p, 0)? as u32, arg64(p, 1)?);
            *caller.data_mut().metric_values.entry(id).or_default() += offset;
            OK
        }
        "proxy_get_header_map_value" => {
            let key = read(&caller, arg(p, 1)?, arg(p, 2)?)?;
            caller.data_mut().bytes_from_module += key.len() as u64;
            let found = (arg(p, 0)? == REQUEST_HEADERS)
                .then(|| {
                    caller
                        .data()
                        .request_headers
                        .iter()
                        .find(|(k, _)| k.as_bytes().eq_ignore_ascii_case(&key))
                        .map(|(_, v)| v.clone())
                })
                .flatten();
            match found {
                Some(v) => {
                    give(&mut caller, &v, arg(p, 3)?, arg(p, 4)?)?;
                    OK
                }
                None => NOT_FOUND,
            }
        }
        "proxy_get_property" => {
            let path = read(&caller, arg(p, 0)?, arg(p, 1)?)?;
            caller.data_mut().bytes_from_module += path.len() as u64;
            // Path segments are NUL-separated: "source\0address".
            let key = String::from_utf8_lossy(&path).replace('\0', ".");
            match caller.data().properties.get(&key).cloned() {
                Some(v) => {
                    give(&mut caller, &v, arg(p, 2)?, arg(p, 3)?)?;
                    OK
                }
                None => NOT_FOUND,
            }
        }
        "proxy_get_shared_data" => {
            let key = read(&caller, arg(p, 0)?, arg(p, 1)?)?;
            caller.data_mut().bytes_from_module += key.len() as u64;
            match caller.data().shared.get(&key).cloned() {
                Some((value, cas)) => {
                    give(&mut caller, &value, arg(p, 2)?, arg(p, 3)?)?;
                    write(&mut caller, arg(p, 4)?, &cas.to_le_bytes())?;
                    OK
                }
                None => NOT_FOUND,
            }
        }
        "proxy_set_shared_data" => {
            let key = read(&caller, arg(p, 0)?, arg(p, 1)?)?;
            let value = read(&caller, arg(p, 2)?, arg(p, 3)?)?;
            let cas = arg(p, 4)? as u32;
            let h = caller.data_mut();
            h.bytes_from_module += (key.len() + value.len()) as u64;
            let current = h.shared.get(&key).map(|(_, c)| *c);
            if cas != 0 && current.is_some_and(|c| c != cas) {
                CAS_MISMATCH
            } else {
                h.next_cas = h.next_cas.wrapping_add(1).max(1);
                let next = h.next_cas;
                h.shared.insert(key, (value, next));
                OK
            }
        }
        "proxy_define_metric" => {
            let name = read(&caller, arg(p, 1)?, arg(p, 2)?)?;
            let h = caller.data_mut();
            h.metrics.push(String::from_utf8_lossy(&name).into_owned());
            let id = h.metrics.len() as u32;
            write(&mut caller, arg(p, 3)?, &id.to_le_bytes())?;
            OK
        }
        "proxy_send_local_response" => {
            caller.data_mut().local_replies += 1;
            OK
        }
        "environ_sizes_get" => {
            write(&mut caller, arg(p, 0)?, &0u32.to_le_bytes())?;
            write(&mut caller, arg(p, 1)?, &0u32.to_le_bytes())?;
            OK
        }
        "fd_write" => {
            // (fd, iovs, iovs_len, nwritten): report everything written.
            let iovs = read(&caller, arg(p, 1)?, arg(p, 2)? * 8)?;
            let total: u32 = iovs
                .chunks_exact(8)
                .map(|c| u32::from_le_bytes([c[4], c[5], c[6], c[7]]))
                .sum();
            write(&mut caller, arg(p, 3)?, &total.to_le_bytes())?;
            OK
        }
        "proc_exit" => return Err(Error::new("the module called proc_exit")),
        _ => OK,
    };
    if let Some(slot) = r.first_mut() {
        *slot = Val::I32(status);
    }
    Ok(())
}
