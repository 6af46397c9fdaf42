use super::*;
use std::fs;

/// This machine's /proc/net/snmp, as Linux 6.x writes it.
const SNMP: &str = "\
Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos InDiscards InDelivers OutRequests OutDiscards OutNoRoutes ReasmTimeout ReasmReqds ReasmOKs ReasmFails FragOKs FragFails FragCreates OutTransmits
Ip: 2 64 6666821 0 0 0 0 0 6666821 6663164 0 0 0 0 0 0 0 0 0 6663164
Icmp: InMsgs InErrors InCsumErrors InDestUnreachs InTimeExcds InParmProbs InSrcQuenchs InRedirects InEchos InEchoReps InTimestamps InTimestampReps InAddrMasks InAddrMaskReps OutMsgs OutErrors OutRateLimitGlobal OutRateLimitHost OutDestUnreachs OutTimeExcds OutParmProbs OutSrcQuenchs OutRedirects OutEchos OutEchoReps OutTimestamps OutTimestampReps OutAddrMasks OutAddrMaskReps
Icmp: 15148 0 0 15148 0 0 0 0 0 0 0 0 0 0 15146 0 0 0 15146 0 0 0 0 0 0 0 0 0 0
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 51 4 1 31 0 9383 5759 17 0 33 0
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 6641604 0 0 6641583 0 0 0 0 0
";

const PSI: &str = "some avg10=2.65 avg60=0.95 avg300=3.55 total=339894910\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";

struct Tree(tempfile::TempDir);

impl Tree {
    fn new() -> Tree {
        let t = Tree(tempfile::tempdir().unwrap());
        t.put("proc/net/snmp", SNMP);
        t.put("proc/pressure/cpu", PSI);
        t.iface("eth0", [1000, 2000, 3, 4, 5]);
        t.iface("lo", [77, 77, 0, 0, 0]);
        // A file beside the interfaces, as the bonding driver leaves one.
        t.put("sys/class/net/bonding_masters", "bond0\n");
        t
    }

    fn put(&self, rel: &str, text: &str) {
        let p = self.0.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn iface(&self, name: &str, v: [u64; 5]) {
        let files = [
            "rx_bytes",
            "tx_bytes",
            "rx_dropped",
            "tx_dropped",
            "rx_missed_errors",
        ];
        for (f, v) in files.iter().zip(v) {
            self.put(
                &format!("sys/class/net/{name}/statistics/{f}"),
                &format!("{v}\n"),
            );
        }
    }

    fn source(&self) -> LinuxSource {
        LinuxSource::new("n7").with_root(self.0.path())
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.path().join(rel)
    }
}

fn value(s: &[MetricSample], name: MetricName, dev: Option<&str>) -> Option<f64> {
    s.iter()
        .find(|x| x.name == name && x.labels.device.as_deref() == dev)
        .map(|x| x.value)
}

#[test]
fn every_counter_from_a_fixture_tree() {
    let t = Tree::new();
    let (s, st) = t.source().read(1.0e9);
    assert!(st.errors.is_empty() && st.missing.is_empty(), "{st:?}");
    assert_eq!(st.samples, 11);
    assert!(s.iter().all(|x| x.node == "n7" && x.ts == 1.0e9));
    assert_eq!(value(&s, MetricName::TcpRetransSegs, None), Some(17.0));
    assert_eq!(value(&s, MetricName::TcpOutSegs, None), Some(5759.0));
    assert_eq!(
        value(&s, MetricName::NetRxBytes, Some("eth0")),
        Some(1000.0)
    );
    assert_eq!(
        value(&s, MetricName::NetTxBytes, Some("eth0")),
        Some(2000.0)
    );
    assert_eq!(
        value(&s, MetricName::NetRxDrop, Some("eth0")),
        Some(3.0 + 5.0),
        "dropped + missed"
    );
    assert_eq!(value(&s, MetricName::NetTxDrop, Some("eth0")), Some(4.0));
    assert_eq!(value(&s, MetricName::NetRxBytes, Some("lo")), Some(77.0));
    assert_eq!(
        value(&s, MetricName::CpuPressureWaiting, None),
        Some(339.89491)
    );
    // node-exporter's float for the same counter, to the last bit.
    let t = t_with("proc/pressure/cpu", "some avg10=0 total=421735426\n");
    let (s, _) = t.source().read(1.0e9);
    assert_eq!(
        value(&s, MetricName::CpuPressureWaiting, None),
        Some(421.73542599999996)
    );
}

#[test]
fn interface_filters() {
    let t = Tree::new();
    let (s, _) = t
        .source()
        .with_interfaces(IfaceFilter::without_loopback())
        .read(1.0e9);
    assert!(value(&s, MetricName::NetRxBytes, Some("lo")).is_none());
    assert!(value(&s, MetricName::NetRxBytes, Some("eth0")).is_some());

    let (s, st) = t
        .source()
        .with_interfaces(IfaceFilter::only(["lo", "ib0"]))
        .read(1.0e9);
    let devices: Vec<_> = s
        .iter()
        .filter_map(|x| x.labels.device.as_deref())
        .collect();
    assert_eq!(devices, ["lo"; 4]);
    assert_eq!(st.missing, [t.path("sys/class/net/ib0")], "a typo shows up");
}

#[test]
fn missing_files_are_noted_and_the_rest_still_read() {
    let t = Tree::new();
    fs::remove_file(t.path("proc/pressure/cpu")).unwrap();
    fs::remove_file(t.path("sys/class/net/eth0/statistics/tx_dropped")).unwrap();
    fs::remove_file(t.path("sys/class/net/eth0/statistics/rx_missed_errors")).unwrap();
    let (s, st) = t.source().read(1.0e9);
    assert!(st.errors.is_empty(), "{:?}", st.errors);
    assert_eq!(
        st.missing,
        [
            t.path("sys/class/net/eth0/statistics/tx_dropped"),
            t.path("proc/pressure/cpu"),
        ]
    );
    assert_eq!(value(&s, MetricName::NetRxDrop, Some("eth0")), Some(3.0));
    assert_eq!(value(&s, MetricName::TcpOutSegs, None), Some(5759.0));
    assert_eq!(st.samples, 9);

    let empty = tempfile::tempdir().unwrap();
    let (s, st) = LinuxSource::new("n").with_root(empty.path()).read(1.0e9);
    assert!(s.is_empty() && st.errors.is_empty());
    assert_eq!(st.missing.len(), 3, "{:?}", st.missing);
}

fn only_error(t: &Tree) -> String {
    let (_, st) = t.source().read(1.0e9);
    assert_eq!(st.errors.len(), 1, "{:?}", st.errors);
    st.errors[0].to_string()
}

#[test]
fn malformed_files_are_named_with_their_line() {
    let snmp = t_with("proc/net/snmp", &SNMP.replace(" 5759 17 ", " 5759 x17 "));
    let e = only_error(&snmp);
    let want = format!(
        "{} line 6: field RetransSegs: \"x17\" is not a counter",
        snmp.path("proc/net/snmp").display()
    );
    assert_eq!(e, want);

    let short = t_with("proc/net/snmp", &SNMP.replace(" 17 0 33 0\n", " 17\n"));
    assert!(only_error(&short).ends_with("snmp line 6: 12 Tcp: values for 15 names"));

    let renamed = t_with("proc/net/snmp", &SNMP.replace("RetransSegs", "Retrans"));
    assert!(only_error(&renamed).ends_with("snmp line 5: no field RetransSegs"));

    let cut = t_with("proc/net/snmp", SNMP.split("Tcp: 1 ").next().unwrap());
    assert!(only_error(&cut).ends_with("snmp line 6: Tcp: field names without a values line"));

    let psi = t_with("proc/pressure/cpu", "some avg10=0.00 total=12a\n");
    let e = only_error(&psi);
    assert!(e.contains("pressure/cpu line 1: total=\"12a\""), "{e}");

    let psi = t_with("proc/pressure/cpu", "full avg10=0 total=1\n");
    assert!(only_error(&psi).ends_with("cpu: no `some` line"));

    let rx = t_with("sys/class/net/eth0/statistics/rx_bytes", "12 34\n");
    let e = only_error(&rx);
    assert!(
        e.contains("eth0/statistics/rx_bytes line 1: \"12 34\" is not a counter"),
        "{e}"
    );
    let (s, _) = rx.source().read(1.0e9);
    assert!(value(&s, MetricName::NetRxBytes, Some("eth0")).is_none());
    assert!(value(&s, MetricName::NetTxBytes, Some("eth0")).is_some());
}

fn t_with(rel: &str, text: &str) -> Tree {
    let t = Tree::new();
    t.put(rel, text);
    t
}

/// This machine's own counters move the way the traffic they count does.
#[test]
fn this_machines_proc_and_sys() {
    use std::io::{Read, Write};
    let src = LinuxSource::new("here").with_interfaces(IfaceFilter::only(["lo"]));
    let (a, st) = src.read(1.0e9);
    assert!(st.errors.is_empty(), "{:?}", st.errors);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let sink = std::thread::spawn(move || {
        let mut got = Vec::new();
        l.accept().unwrap().0.read_to_end(&mut got).unwrap();
        got.len()
    });
    let mb = vec![7u8; 1 << 20];
    std::net::TcpStream::connect(addr)
        .unwrap()
        .write_all(&mb)
        .unwrap();
    assert_eq!(sink.join().unwrap(), 1 << 20);
    let (b, st) = src.read(1.0e9 + 1.0);
    assert!(st.errors.is_empty(), "{:?}", st.errors);
    let delta = |name, dev| value(&b, name, dev).unwrap() - value(&a, name, dev).unwrap();
    assert!(delta(MetricName::NetRxBytes, Some("lo")) >= (1 << 20) as f64);
    assert!(delta(MetricName::NetTxBytes, Some("lo")) >= (1 << 20) as f64);
    assert!(delta(MetricName::TcpOutSegs, None) >= 1.0);
    assert!(delta(MetricName::TcpRetransSegs, None) >= 0.0);
    if Path::new("/proc/pressure/cpu").exists() {
        assert!(delta(MetricName::CpuPressureWaiting, None) >= 0.0);
    }
}

#[test]
fn a_nodes_cgroup_gives_its_own_cpu_pressure_v2_then_v1() {
    let t = Tree::new();
    // cgroup v2: cpu.pressure, the same format as /proc/pressure/cpu.
    t.put(
        "cg2/cpu.pressure",
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=2500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    );
    let (s, st) = t.source().with_cgroup(t.path("cg2")).read(1.0e9);
    assert!(st.errors.is_empty(), "{:?}", st.errors);
    assert_eq!(value(&s, MetricName::CpuPressureWaiting, None), Some(2.5));
    // cgroup v1: cpu.stat's throttled_time in ns; the host's PSI is not read.
    t.put(
        "cg1/cpu.stat",
        "nr_periods 40\nnr_throttled 31\nthrottled_time 1750000000\n",
    );
    let (s, st) = t.source().with_cgroup(t.path("cg1")).read(1.0e9);
    assert!(st.errors.is_empty(), "{:?}", st.errors);
    let p: Vec<f64> = s
        .iter()
        .filter(|x| x.name == MetricName::CpuPressureWaiting)
        .map(|x| x.value)
        .collect();
    assert_eq!(p, vec![1.75]);
}

#[test]
fn a_cgroup_without_cpu_counters_is_an_error_naming_it() {
    let t = Tree::new();
    t.put("cg/cpu.stat", "nr_periods 0\n");
    let (s, st) = t.source().with_cgroup(t.path("cg")).read(1.0e9);
    assert_eq!(value(&s, MetricName::CpuPressureWaiting, None), None);
    assert_eq!(st.errors.len(), 1, "{:?}", st.errors);
    assert_eq!(st.errors[0].path, t.path("cg/cpu.stat"));
    t.put("cg/cpu.stat", "throttled_time lots\n");
    let (_, st) = t.source().with_cgroup(t.path("cg")).read(1.0e9);
    assert_eq!(st.errors[0].line, Some(1), "{:?}", st.errors);
    // The other counters are still read.
    let (s, _) = t.source().with_cgroup(t.path("cg")).read(1.0e9);
    assert!(value(&s, MetricName::TcpRetransSegs, None).is_some());
}

fn cgroup_cpu(s: &[MetricSample]) -> Vec<(String, f64)> {
    s.iter()
        .filter(|x| x.name == MetricName::CgroupCpuSeconds)
        .map(|x| (x.labels.cgroup.clone().unwrap().to_string(), x.value))
        .collect()
}

#[test]
fn each_slurm_jobs_cgroup_cpu_v2_then_v1() {
    let t = Tree::new();
    // No Slurm cgroups: nothing read, nothing noted.
    let (s, st) = t.source().read(1.0e9);
    assert!(cgroup_cpu(&s).is_empty());
    assert!(st.errors.is_empty() && st.missing.is_empty(), "{st:?}");
    // cgroup v1's cpuacct hierarchy (ns).
    let v1 = "sys/fs/cgroup/cpuacct/slurm";
    t.put(
        &format!("{v1}/uid_1000/job_12/cpuacct.usage"),
        "2500000000\n",
    );
    t.put(&format!("{v1}/uid_1000/job_12/step_0/cpuacct.usage"), "1\n");
    t.put(&format!("{v1}/uid_1000/cpuacct.usage"), "9\n");
    let (s, st) = t.source().read(1.0e9);
    assert!(st.errors.is_empty(), "{:?}", st.errors);
    assert_eq!(cgroup_cpu(&s), vec![("/slurm/uid_1000/job_12".into(), 2.5)]);
    // cgroup v2's Slurm scope (cpu.stat usage_usec), read in its place.
    let v2 = "sys/fs/cgroup/system.slice/slurmstepd.scope";
    let stat = "usage_usec 7250000\nuser_usec 7000000\nsystem_usec 250000\n";
    t.put(&format!("{v2}/job_4242/cpu.stat"), stat);
    t.put(
        &format!("{v2}/job_77/cpu.stat"),
        "user_usec 1\nusage_usec 500000\n",
    );
    t.put(&format!("{v2}/system/cpu.stat"), stat);
    let (s, st) = t.source().read(1.0e9);
    assert!(st.errors.is_empty(), "{:?}", st.errors);
    assert_eq!(
        cgroup_cpu(&s),
        vec![
            ("/system.slice/slurmstepd.scope/job_4242".into(), 7.25),
            ("/system.slice/slurmstepd.scope/job_77".into(), 0.5),
        ]
    );
    // A malformed one is named with its line; the others are still read.
    t.put(&format!("{v2}/job_77/cpu.stat"), "usage_usec many\n");
    let (s, st) = t.source().read(1.0e9);
    assert_eq!(st.errors.len(), 1, "{:?}", st.errors);
    assert_eq!(st.errors[0].path, t.path(&format!("{v2}/job_77/cpu.stat")));
    assert_eq!(st.errors[0].line, Some(1));
    assert_eq!(cgroup_cpu(&s).len(), 1);
    // Off when asked.
    let mut src = t.source();
    src.slurm_jobs = false;
    assert!(cgroup_cpu(&src.read(1.0e9).0).is_empty());
}

#[test]
fn slurm_job_cgroups_past_the_bound_are_counted_not_read() {
    let t = Tree::new();
    let v2 = "sys/fs/cgroup/system.slice/slurmstepd.scope";
    for j in 0..SLURM_JOBS_MAX + 3 {
        t.put(&format!("{v2}/job_{j}/cpu.stat"), "usage_usec 1\n");
    }
    let (s, st) = t.source().read(1.0e9);
    assert_eq!(cgroup_cpu(&s).len(), SLURM_JOBS_MAX);
    assert_eq!(st.jobs_dropped, 3);
}

/// A real cgroup v1 `cpuacct` hierarchy, where this kernel mounts one and
/// we are root: a busy process in `slurm/uid_0/job_4242` is seen taking
/// CPU time.
#[test]
fn a_real_cpuacct_cgroup_counts_a_busy_process() {
    let real = Path::new("/sys/fs/cgroup/cpuacct");
    let base = real.join(format!("keel-test-{}", std::process::id()));
    if !real.join("cpuacct.usage").exists() || fs::create_dir(&base).is_err() {
        eprintln!("skipped: no writable cgroup v1 cpuacct hierarchy here");
        return;
    }
    let job = base.join("slurm/uid_0/job_4242");
    fs::create_dir_all(&job).unwrap();
    let t = tempfile::tempdir().unwrap();
    fs::create_dir_all(t.path().join("sys/fs/cgroup")).unwrap();
    std::os::unix::fs::symlink(&base, t.path().join("sys/fs/cgroup/cpuacct")).unwrap();
    let mut busy = std::process::Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .unwrap();
    fs::write(job.join("tasks"), busy.id().to_string()).unwrap();
    let src = LinuxSource::new("n1").with_root(t.path());
    let first = cgroup_cpu(&src.read(1.0).0);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let second = cgroup_cpu(&src.read(2.0).0);
    busy.kill().unwrap();
    busy.wait().unwrap();
    for d in ["slurm/uid_0/job_4242", "slurm/uid_0", "slurm", ""] {
        let _ = fs::remove_dir(base.join(d));
    }
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].0, "/slurm/uid_0/job_4242");
    let used = second[0].1 - first[0].1;
    assert!(used > 0.05, "the busy process's CPU time: {used} s");
}
