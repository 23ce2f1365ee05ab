// The parts of Apache ECharts the dashboard uses, and no more (tree-shaken by esbuild):
// bar and line charts, the world map, tooltips, grids, legends, a visual map, the SVG
// renderer (crisp at any zoom, small) and the aria module (a text description of each
// chart for screen readers).
import * as echarts from "echarts/core";
import { BarChart, LineChart, MapChart } from "echarts/charts";
import {
  AriaComponent,
  DataZoomComponent,
  GridComponent,
  LegendComponent,
  TooltipComponent,
  VisualMapComponent,
} from "echarts/components";
import { SVGRenderer } from "echarts/renderers";

echarts.use([
  BarChart, LineChart, MapChart, AriaComponent, DataZoomComponent, GridComponent,
  LegendComponent, TooltipComponent, VisualMapComponent, SVGRenderer,
]);

export const init = echarts.init;
export const registerMap = echarts.registerMap;
export const getInstanceByDom = echarts.getInstanceByDom;
