//! Which kernel modules to load, in which order: a pure reading of the
//! `modules.dep` the image carries (depmod's format) and of its list of
//! wanted modules.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

/// A module `modules.load` asks for is not in `modules.dep`.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("module `{0}` is not in modules.dep")]
pub(crate) struct UnknownModule(pub String);

/// The dependency table of `modules.dep`: module path → the paths it needs.
#[derive(Debug, Default)]
pub(crate) struct ModuleDeps {
    deps: BTreeMap<String, Vec<String>>,
    by_name: BTreeMap<String, String>,
}

impl ModuleDeps {
    /// Parses depmod's `modules.dep`: `path: dep dep …`, one module a line.
    pub(crate) fn parse(text: &str) -> Self {
        let mut table = Self::default();
        for line in text.lines() {
            let Some((path, needs)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim().to_owned();
            if path.is_empty() {
                continue;
            }
            table.by_name.insert(module_name(&path), path.clone());
            table
                .deps
                .insert(path, needs.split_whitespace().map(str::to_owned).collect());
        }
        table
    }

    /// The paths to load so that every wanted module (by name, `-` and `_`
    /// alike) is loaded after everything it needs; each path once.
    pub(crate) fn load_order<'a>(
        &self,
        wanted: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<String>, UnknownModule> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in wanted {
            let path = self
                .by_name
                .get(&normalize(name))
                .ok_or_else(|| UnknownModule(name.to_owned()))?;
            self.visit(path, &mut seen, &mut order);
        }
        Ok(order)
    }

    fn visit(&self, path: &str, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
        if !seen.insert(path.to_owned()) {
            return;
        }
        // depmod lists a module's dependencies closest first; load the far ones first.
        for dep in self.deps.get(path).into_iter().flatten().rev() {
            self.visit(dep, seen, order);
        }
        order.push(path.to_owned());
    }
}

/// The names in a `modules.load` list: one a line, `#` comments.
pub(crate) fn wanted(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalize(stem)
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/mmc/host/sdhci-iproc.ko: kernel/drivers/mmc/host/sdhci-pltfm.ko
kernel/drivers/mmc/host/sdhci-pltfm.ko:
";

    #[test]
    fn dependencies_come_first_and_once() {
        let deps = ModuleDeps::parse(DEP);
        let order = deps
            .load_order(["virtio_pci", "virtio_net", "net_failover"])
            .unwrap();
        let pos = |name: &str| order.iter().position(|p| p.contains(name)).unwrap();
        assert!(pos("virtio_ring.ko") < pos("virtio_pci.ko"));
        assert!(pos("/virtio.ko") < pos("virtio_pci.ko"));
        assert!(pos("failover.ko") < pos("net_failover.ko"));
        assert!(pos("net_failover.ko") < pos("virtio_net.ko"));
        assert_eq!(order.len(), 7, "{order:?}");
    }

    #[test]
    fn dashes_and_underscores_name_the_same_module() {
        let deps = ModuleDeps::parse(DEP);
        let order = deps.load_order(["sdhci_iproc"]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/mmc/host/sdhci-pltfm.ko",
                "kernel/drivers/mmc/host/sdhci-iproc.ko"
            ]
        );
    }

    #[test]
    fn an_unknown_module_is_an_error() {
        let deps = ModuleDeps::parse(DEP);
        assert_eq!(deps.load_order(["nope"]), Err(UnknownModule("nope".into())));
    }

    #[test]
    fn the_load_list_skips_comments() {
        let names: Vec<_> = wanted("# disks\nvirtio_blk\n\n ext4 # data\n").collect();
        assert_eq!(names, ["virtio_blk", "ext4"]);
    }
}
