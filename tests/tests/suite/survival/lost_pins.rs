//! Beyond the list: the map pins are lost (someone removed
//! `BPFFS/maps-v1`) while the link pins remain. The agent started next has
//! to create its maps anew (conntrack cannot survive that), and then every
//! attachment must run on those new maps: a program kept because its code is
//! the same would go on using the orphaned old maps, so that the agent's
//! `stats`, `conntrack` and endpoint updates no longer reach the datapath.

use datapath_tests::assert_ping;
use datapath_tests::node::{delta, Datapath, Node};

use super::{start_count, start_list, start_report, MAPS_DIR};

#[test]
fn lost_map_pins_every_attachment_gets_the_new_maps() {
    datapath_tests::kernel_test!();
    let mut node = Node::on(Datapath::Ebpf);
    let a = node.create_endpoint(&node.ep("a"), &[]);
    let b = node.create_endpoint(&node.ep("b"), &[]);
    assert_ping(&a.name, &b.ip, 1);
    node.kill_agent();
    std::fs::remove_dir_all(node.bpffs.join(MAPS_DIR)).unwrap();
    node.start_agent();
    let start = start_report(&mut node);
    println!("map pins lost: start report {start}");
    let kept = start_count(&start, "attachments_kept");
    if start_list(&start, "maps_created").is_empty() || kept > 0 {
        node.fail(format!("with the map pins lost, {kept} attachments kept their old maps: {start}"));
    }
    // The datapath counts into the maps the agent reads.
    let s0 = node.stats();
    assert_ping(&a.name, &b.ip, 3);
    let s1 = node.stats();
    let (rp, _) = delta(&s0, &s1, "redirect-peer");
    if rp < 6 {
        node.fail(format!("after the restart on lost map pins, 3 echo exchanges counted {rp} redirect-peer packets"));
    }
}
