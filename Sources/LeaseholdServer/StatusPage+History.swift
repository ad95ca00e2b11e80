/// The page's history and usage pieces (`Static/history.js` fills them on demand).
extension StatusPage {
    /// The usage section: nothing is fetched until a window is picked; without JavaScript the
    /// links lead to the JSON.
    static func usageSection() -> String {
        """
        <section id="usage-section" class="block">
        <h2>Usage per type</h2>
        <div id="usage">
        <p class="usage-tools"><a class="btn btn-small" data-days="1" href="/v1/usage?by=type">Last day</a><a class="btn btn-small" data-days="7" href="/v1/usage?by=type">Last week</a> <span class="usage-hint">click a resource's name above for its history</span></p>
        <p id="usage-status" class="usage-status" hidden></p>
        <table id="usage-table" class="grid usage-table" hidden><thead><tr><th class="u-name">Type</th><th class="u-held">Held</th><th class="u-share">Share</th><th class="u-leases">Leases</th><th class="u-p50">Wait p50</th><th class="u-p95">Wait p95</th><th class="u-abnormal">Abnormal ends</th><th class="u-resets">Failed resets</th></tr></thead><tbody></tbody></table>
        </div>
        </section>

        """
    }
}
