//! Running commands with a deadline, and background processes that are always
//! reaped (their guard kills them on drop, including when the caller panics).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;

/// Default deadline for one foreground command.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// `program arg arg ...`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        s.push(' ');
        if a.contains(char::is_whitespace) || a.is_empty() {
            // Long python one-liners: keep messages readable.
            if a.len() > 60 {
                s.push_str("'<script>'");
            } else {
                s.push('\'');
                s.push_str(&a);
                s.push('\'');
            }
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// Runs `cmd` to completion (stdin closed, output captured). If it has not
/// finished after `timeout` it is killed and the returned output says so on
/// stderr, with a failing status.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let desc = describe(cmd);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{desc}`: {e}"));
    let t_out = reader(child.stdout.take().unwrap());
    let t_err = reader(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().expect("wait after kill");
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for `{desc}`: {e}"),
        }
    };
    let stdout = t_out.join().unwrap_or_default();
    let mut stderr = t_err.join().unwrap_or_default();
    if timed_out {
        stderr
            .extend_from_slice(format!("\n[testbed] `{desc}` timed out after {timeout:?} and was killed\n").as_bytes());
    }
    Output { status, stdout, stderr }
}

/// Runs with [`CMD_TIMEOUT`].
pub fn run(cmd: &mut Command) -> Output {
    run_timeout(cmd, CMD_TIMEOUT)
}

fn reader<R: Read + Send + 'static>(mut r: R) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// Human-readable summary of an output, for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "status: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

pub fn stdout_str(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr_str(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Sends `sig` to `pid`. Errors (the process is already gone) are ignored.
pub fn signal(pid: u32, sig: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// Waits up to `timeout` for `child` to exit.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(_) => return None,
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`; always reaps. Returns the exit status
/// and whether SIGKILL was needed.
pub fn terminate(child: &mut Child, grace: Duration) -> (Option<ExitStatus>, bool) {
    if let Ok(Some(s)) = child.try_wait() {
        return (Some(s), false);
    }
    signal(child.id(), Signal::SIGTERM);
    if let Some(s) = wait_timeout(child, grace) {
        return (Some(s), false);
    }
    let _ = child.kill();
    (child.wait().ok(), true)
}

/// A background process with captured stdout lines and stderr. Dropping it
/// kills (SIGKILL) and reaps the process.
pub struct BgProcess {
    child: Option<Child>,
    desc: String,
    lines: Arc<Mutex<Vec<String>>>,
    rx: Receiver<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
    threads: Vec<JoinHandle<()>>,
}

impl BgProcess {
    pub fn spawn(mut cmd: Command) -> BgProcess {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let desc = describe(&cmd);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{desc}`: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let l2 = lines.clone();
        let t1 = thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                l2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut err = child.stderr.take().unwrap();
        let e2 = stderr.clone();
        let t2 = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match err.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => e2.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        });
        BgProcess { child: Some(child), desc, lines, rx, stderr, threads: vec![t1, t2] }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn desc(&self) -> &str {
        &self.desc
    }

    /// Waits for a stdout line matching `pred` (lines already read count).
    pub fn wait_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            match self.rx.recv_timeout(deadline - now) {
                Ok(l) if pred(&l) => return Some(l),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Exit status if it has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `timeout` for a natural exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = wait_timeout(self.child.as_mut().unwrap(), timeout);
        if status.is_some() {
            // The process is gone, but its last lines may still be in the
            // pipe: let the readers drain it (bounded: a grandchild could
            // keep the pipe open).
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
        }
        status
    }

    /// Stdout lines read so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// SIGTERM (SIGKILL after 3 s), reap, and return every stdout line and
    /// the stderr text.
    pub fn stop(&mut self) -> (Vec<String>, String) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(3));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        (self.lines(), self.stderr())
    }
}

impl Drop for BgProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = wait_timeout(&mut c, Duration::from_secs(5));
        }
        // Reader threads end when the pipes close; don't block on them.
    }
}
